package mask

// Postgres type OIDs (src/include/catalog/pg_type.dat) that replacement
// treats specially; everything else becomes NULL.
const (
	oidBytea   = 17
	oidName    = 19
	oidText    = 25
	oidJSON    = 114
	oidBpchar  = 1042
	oidVarchar = 1043
	oidUUID    = 2950
	oidJSONB   = 3802
	oidUnknown = 705
)

// Format codes of the Postgres wire protocol.
const (
	FormatText   int16 = 0
	FormatBinary int16 = 1
)

// maskedJSON is what a json or jsonb value becomes: a valid JSON document
// that says what happened.
const maskedJSON = `"[masked]"`

// IsText reports whether values of the type are text whose shape Value
// keeps (and in which detectors look for personal data).
func IsText(oid uint32) bool {
	switch oid {
	case oidText, oidVarchar, oidBpchar, oidName, oidUnknown:
		return true
	}
	return false
}

// Value returns the masked form of one cell: v of type oid in format
// (FormatText or FormatBinary), or null when v is NULL. The result is
// appended to dst[:0], so a caller can reuse one buffer for every cell; a
// nil result with null true means NULL.
func Value(dst []byte, oid uint32, format int16, v []byte, null bool) (out []byte, isNull bool) {
	if null {
		return nil, true
	}
	switch {
	case IsText(oid):
		return Shape(dst[:0], v), false
	case oid == oidUUID:
		if format == FormatBinary {
			return append(dst[:0], make([]byte, 16)...), false
		}
		return append(dst[:0], "00000000-0000-0000-0000-000000000000"...), false
	case oid == oidJSON:
		return append(dst[:0], maskedJSON...), false
	case oid == oidJSONB:
		if format == FormatBinary {
			return append(append(dst[:0], 1), maskedJSON...), false // jsonb binary: version 1, then text
		}
		return append(dst[:0], maskedJSON...), false
	}
	return nil, true
}

// Shape replaces letters with 'x' and digits with '0', keeping every
// other byte; multi-byte UTF-8 letters become one 'x' each, so the result
// is valid UTF-8 of the same character count.
func Shape(dst, v []byte) []byte {
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= '0' && c <= '9':
			dst = append(dst, '0')
		case c < 0x80:
			if (c|0x20) >= 'a' && (c|0x20) <= 'z' {
				dst = append(dst, 'x')
			} else {
				dst = append(dst, c)
			}
		default:
			// A UTF-8 sequence: skip its continuation bytes.
			for i+1 < len(v) && v[i+1]&0xC0 == 0x80 {
				i++
			}
			dst = append(dst, 'x')
		}
	}
	return dst
}
