package mask

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"

	"github.com/sluicehq/sluice/policies"
)

// Detector names, as policies.Detectors lists them.
const (
	CreditCard = "credit_card"
	Email      = "email"
	USSSN      = "us_ssn"
	IBAN       = "iban"
	APIKey     = "api_key"
	JWT        = "jwt"
)

// Span is one detector hit: v[Start:End] is personal data or a secret.
type Span struct {
	Start, End int
	Kind       string
}

// Detectors is a compiled set of detectors.
type Detectors struct {
	kinds []string
}

// NewDetectors compiles the named detectors.
func NewDetectors(names []string) (*Detectors, error) {
	d := &Detectors{}
	for _, n := range names {
		if !slices.Contains(policies.Detectors, n) {
			return nil, fmt.Errorf("unknown detector %q", n)
		}
		if !slices.Contains(d.kinds, n) {
			d.kinds = append(d.kinds, n)
		}
	}
	return d, nil
}

// Empty reports whether no detector is enabled.
func (d *Detectors) Empty() bool { return d == nil || len(d.kinds) == 0 }

// Find returns every hit in v, in order of Start, spans not overlapping.
func (d *Detectors) Find(v []byte) []Span {
	if d.Empty() || len(v) < 6 {
		return nil
	}
	var spans []Span
	for _, k := range d.kinds {
		spans = append(spans, finders[k](v)...)
	}
	if len(spans) < 2 {
		return spans
	}
	slices.SortFunc(spans, func(a, b Span) int { return a.Start - b.Start })
	out := spans[:1]
	for _, s := range spans[1:] {
		last := &out[len(out)-1]
		if s.Start < last.End { // overlapping: keep the union
			last.End = max(last.End, s.End)
			continue
		}
		out = append(out, s)
	}
	return out
}

// Redact shapes the spans of v (see Shape) and keeps the rest, appending
// to dst.
func Redact(dst, v []byte, spans []Span) []byte {
	prev := 0
	for _, s := range spans {
		dst = append(dst, v[prev:s.Start]...)
		dst = Shape(dst, v[s.Start:s.End])
		prev = s.End
	}
	return append(dst, v[prev:]...)
}

var finders = map[string]func([]byte) []Span{
	CreditCard: findCards,
	Email:      regexFinder(Email, containsByte('@'), `[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}`, nil),
	USSSN:      regexFinder(USSSN, containsByte('-'), `\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b`, validSSN),
	IBAN:       regexFinder(IBAN, mayHoldIBAN, `\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}\b`, validIBAN),
	APIKey: regexFinder(APIKey, containsAny("AKIA", "gh", "github_pat_", "k_live_", "k_test_", "xox", "AIza", "glpat-", "-----BEGIN"), `\b(?:AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22,}|`+
		`[sr]k_(?:live|test)_[A-Za-z0-9]{16,}|xox[abprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35}|glpat-[A-Za-z0-9_\-]{20})\b|`+
		`-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----`, nil),
	JWT: regexFinder(JWT, containsAny("eyJ"), `\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*`, nil),
}

// regexFinder finds matches of expr that pass valid. may is a cheap test
// every match passes, run first so that most values never reach the
// regexp: detectors scan every text cell no rule names.
func regexFinder(kind string, may func([]byte) bool, expr string, valid func([]byte) bool) func([]byte) []Span {
	re := regexp.MustCompile(expr)
	return func(v []byte) []Span {
		if !may(v) {
			return nil
		}
		var out []Span
		for _, m := range re.FindAllIndex(v, -1) {
			if valid == nil || valid(v[m[0]:m[1]]) {
				out = append(out, Span{Start: m[0], End: m[1], Kind: kind})
			}
		}
		return out
	}
}

func containsByte(c byte) func([]byte) bool {
	return func(v []byte) bool { return bytes.IndexByte(v, c) >= 0 }
}

func containsAny(subs ...string) func([]byte) bool {
	return func(v []byte) bool {
		for _, s := range subs {
			if bytes.Contains(v, []byte(s)) {
				return true
			}
		}
		return false
	}
}

// mayHoldIBAN looks for two capital letters followed by two digits, how
// every IBAN starts.
func mayHoldIBAN(v []byte) bool {
	for i := 0; i+3 < len(v); i++ {
		if v[i] >= 'A' && v[i] <= 'Z' && v[i+1] >= 'A' && v[i+1] <= 'Z' && isDigit(v[i+2]) && isDigit(v[i+3]) {
			return true
		}
	}
	return false
}

// findCards finds runs of 13 to 19 digits, optionally grouped by single
// spaces or dashes, that pass the Luhn check.
func findCards(v []byte) []Span {
	var out []Span
	for i := 0; i < len(v); {
		if !isDigit(v[i]) || (i > 0 && (isDigit(v[i-1]) || isLetter(v[i-1]))) {
			i++
			continue
		}
		// Extend over digits and single separators.
		j, digits := i, 0
		end := i
		for j < len(v) {
			if isDigit(v[j]) {
				digits++
				j++
				end = j
				continue
			}
			if (v[j] == ' ' || v[j] == '-') && j+1 < len(v) && isDigit(v[j+1]) && digits < 19 {
				j++
				continue
			}
			break
		}
		if digits >= 13 && digits <= 19 && (end == len(v) || !isLetter(v[end])) && luhn(v[i:end]) {
			out = append(out, Span{Start: i, End: end, Kind: CreditCard})
		}
		i = max(end, i+1)
	}
	return out
}

func luhn(s []byte) bool {
	sum, double := 0, false
	for i := len(s) - 1; i >= 0; i-- {
		if !isDigit(s[i]) {
			continue
		}
		d := int(s[i] - '0')
		if double {
			if d *= 2; d > 9 {
				d -= 9
			}
		}
		sum += d
		double = !double
	}
	return sum%10 == 0
}

// validSSN applies the SSA's rules: no area 000, 666 or 9xx, no group 00,
// no serial 0000.
func validSSN(s []byte) bool {
	area, group, serial := string(s[0:3]), string(s[4:6]), string(s[7:11])
	return area != "000" && area != "666" && s[0] != '9' && group != "00" && serial != "0000"
}

// validIBAN checks the ISO 13616 mod-97 checksum.
func validIBAN(s []byte) bool {
	var compact []byte
	for _, c := range s {
		if c != ' ' {
			compact = append(compact, c)
		}
	}
	if len(compact) < 15 || len(compact) > 34 {
		return false
	}
	rearranged := append(append([]byte{}, compact[4:]...), compact[:4]...)
	rem := 0
	for _, c := range rearranged {
		switch {
		case isDigit(c):
			rem = (rem*10 + int(c-'0')) % 97
		case c >= 'A' && c <= 'Z':
			rem = (rem*100 + int(c-'A'+10)) % 97
		default:
			return false
		}
	}
	return rem == 1
}

func isDigit(c byte) bool  { return c >= '0' && c <= '9' }
func isLetter(c byte) bool { return (c|0x20) >= 'a' && (c|0x20) <= 'z' }
