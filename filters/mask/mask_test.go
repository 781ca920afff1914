package mask

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/sluicehq/sluice/policies"
)

func TestValue(t *testing.T) {
	cases := []struct {
		name   string
		oid    uint32
		format int16
		in     string
		null   bool
		want   string
		isNull bool
	}{
		{"email keeps its shape", oidText, FormatText, "alice@example.com", false, "xxxxx@xxxxxxx.xxx", false},
		{"card keeps grouping", oidVarchar, FormatText, "4111 1111 1111 1111", false, "0000 0000 0000 0000", false},
		{"binary text is bytes", oidText, FormatBinary, "Bob-42", false, "xxx-00", false},
		{"bpchar", oidBpchar, FormatText, "AB12 ", false, "xx00 ", false},
		{"utf-8 letters", oidText, FormatText, "Zoë Ñoño", false, "xxx xxxx", false},
		{"null stays null", oidText, FormatText, "", true, "", true},
		{"uuid text", oidUUID, FormatText, "6f1c…", false, "00000000-0000-0000-0000-000000000000", false},
		{"uuid binary", oidUUID, FormatBinary, "0123456789abcdef", false, string(make([]byte, 16)), false},
		{"json", oidJSON, FormatText, `{"ssn":"1"}`, false, `"[masked]"`, false},
		{"jsonb binary", oidJSONB, FormatBinary, "\x01{}", false, "\x01\"[masked]\"", false},
		{"int becomes null", 23, FormatText, "42", false, "", true},
		{"numeric binary becomes null", 1700, FormatBinary, "\x00\x01", false, "", true},
		{"date becomes null", 1082, FormatText, "2024-01-01", false, "", true},
		{"bytea becomes null", oidBytea, FormatText, `\x00`, false, "", true},
		{"unknown type becomes null", 99999, FormatText, "x", false, "", true},
	}
	buf := make([]byte, 0, 64)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, isNull := Value(buf, c.oid, c.format, []byte(c.in), c.null)
			if isNull != c.isNull || (!isNull && string(out) != c.want) {
				t.Errorf("Value = %q null=%v, want %q null=%v", out, isNull, c.want, c.isNull)
			}
			if isNull && out != nil {
				t.Errorf("NULL with bytes %q", out)
			}
		})
	}
}

func TestShapeIsValidUTF8WithSameRuneCount(t *testing.T) {
	for _, s := range []string{"héllo wörld", "日本語テキスト", "emoji 🙂 ok", "\xff\xfe broken"} {
		out := Shape(nil, []byte(s))
		if utf8.ValidString(s) && (!utf8.Valid(out) || utf8.RuneCount(out) != utf8.RuneCountInString(s)) {
			t.Errorf("Shape(%q) = %q", s, out)
		}
		for _, r := range string(out) {
			if r >= 0x80 {
				t.Errorf("Shape(%q) leaked a non-ASCII rune %q", s, r)
			}
		}
	}
}

func TestDetectors(t *testing.T) {
	all, err := NewDetectors(policies.Detectors)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		in   string
		want []string // the substrings that must be found, in order
	}{
		{"card 4111 1111 1111 1111 on file", []string{"4111 1111 1111 1111"}},
		{"card 4111-1111-1111-1111", []string{"4111-1111-1111-1111"}},
		{"4012888888881881", []string{"4012888888881881"}},
		{"not a card 4111 1111 1111 1112", nil}, // Luhn fails
		{"order 1234567890123", nil},            // Luhn fails
		{"part of id AB4111111111111111", nil},  // glued to letters
		{"mail bob.smith+tag@mail.example.co.uk now", []string{"bob.smith+tag@mail.example.co.uk"}},
		{"user@localhost is not an email", nil},
		{"ssn 123-45-6789.", []string{"123-45-6789"}},
		{"ssn 000-12-3456 666-12-3456 912-34-5678", nil},
		{"iban GB82 WEST 1234 5698 7654 32", []string{"GB82 WEST 1234 5698 7654 32"}},
		{"iban DE89370400440532013000", []string{"DE89370400440532013000"}},
		{"iban GB82WEST12345698765433", nil}, // checksum fails
		{"key AKIAIOSFODNN7EXAMPLE", []string{"AKIAIOSFODNN7EXAMPLE"}},
		{"ghp_" + strings.Repeat("a", 36), []string{"ghp_" + strings.Repeat("a", 36)}},
		{"sk_live_" + strings.Repeat("Z9", 12), []string{"sk_live_" + strings.Repeat("Z9", 12)}},
		{"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", []string{"-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"}},
		{"token eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl end", []string{"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl"}},
		{"plain text with nothing", nil},
		{"two: a@b.io and 4111111111111111", []string{"a@b.io", "4111111111111111"}},
	}
	for _, c := range cases {
		spans := all.Find([]byte(c.in))
		var got []string
		for _, s := range spans {
			got = append(got, c.in[s.Start:s.End])
		}
		if strings.Join(got, "|") != strings.Join(c.want, "|") {
			t.Errorf("Find(%q) = %q, want %q", c.in, got, c.want)
		}
		red := string(Redact(nil, []byte(c.in), spans))
		for _, w := range c.want {
			if strings.Contains(red, w) {
				t.Errorf("Redact(%q) still holds %q: %q", c.in, w, red)
			}
		}
		if len(red) != len(c.in) && utf8.ValidString(c.in) && !strings.ContainsFunc(c.in, func(r rune) bool { return r >= 0x80 }) {
			t.Errorf("Redact changed the length of ASCII input: %q → %q", c.in, red)
		}
	}
	if _, err := NewDetectors([]string{"passport"}); err == nil {
		t.Error("unknown detector accepted")
	}
	only, _ := NewDetectors([]string{Email})
	if spans := only.Find([]byte("4111111111111111 a@b.io")); len(spans) != 1 || spans[0].Kind != Email {
		t.Errorf("only the email detector should run: %v", spans)
	}
}

func TestRules(t *testing.T) {
	all := []policies.MaskingRule{
		{Name: "pii", Columns: []string{"*.email", "customers.card_number", "hr.staff.ssn", "secrets.*"}, Detectors: []string{Email}},
		{Name: "other", Columns: []string{"orders.total"}},
	}
	r, err := Compile(all, []string{"pii"})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		c    Column
		want bool
	}{
		{Column{"public", "users", "email"}, true},
		{Column{"", "anything", "EMAIL"}, true},
		{Column{"public", "customers", "card_number"}, true},
		{Column{"sales", "customers", "card_number"}, true}, // table pattern: any schema
		{Column{"hr", "staff", "ssn"}, true},
		{Column{"", "staff", "ssn"}, true}, // schema unknown: mask
		{Column{"public", "staff", "ssn"}, false},
		{Column{"public", "secrets", "value"}, true},
		{Column{"public", "orders", "total"}, false}, // rule not selected
		{Column{"public", "customers", "name"}, false},
	}
	for _, c := range cases {
		if got := r.Matches(c.c); got != c.want {
			t.Errorf("Matches(%+v) = %v, want %v", c.c, got, c.want)
		}
	}
	if r.Detectors.Empty() {
		t.Error("the pii rule's detector was not compiled")
	}
}

func FuzzRedact(f *testing.F) {
	for _, s := range []string{"a@b.io", "4111 1111 1111 1111", "123-45-6789", "GB82 WEST 1234 5698 7654 32", "eyJa.eyJb.c", "日本 a@b.co", ""} {
		f.Add(s)
	}
	all, _ := NewDetectors(policies.Detectors)
	f.Fuzz(func(t *testing.T, s string) {
		spans := all.Find([]byte(s))
		prev := 0
		for _, sp := range spans {
			if sp.Start < prev || sp.End <= sp.Start || sp.End > len(s) {
				t.Fatalf("bad span %+v in %q", sp, s)
			}
			prev = sp.End
		}
		out := Redact(nil, []byte(s), spans)
		// Outside the spans nothing changes; inside, no letter but 'x' and
		// no digit but '0' survive.
		in, o := 0, 0
		for _, sp := range spans {
			if s[in:sp.Start] != string(out[o:o+sp.Start-in]) {
				t.Fatalf("text outside spans changed: %q → %q", s, out)
			}
			o += sp.Start - in
			shaped := Shape(nil, []byte(s[sp.Start:sp.End]))
			if string(out[o:o+len(shaped)]) != string(shaped) {
				t.Fatalf("span not shaped: %q → %q", s, out)
			}
			for _, c := range shaped {
				if (isLetter(c) && c != 'x') || (isDigit(c) && c != '0') || c >= 0x80 {
					t.Fatalf("shaped span leaks %q: %q", c, shaped)
				}
			}
			o += len(shaped)
			in = sp.End
		}
		if s[in:] != string(out[o:]) {
			t.Fatalf("tail changed: %q → %q", s, out)
		}
	})
}

// BenchmarkValueText is the column-rule path: one text cell shaped.
func BenchmarkValueText(b *testing.B) {
	v := []byte("alice.smith@example.com")
	buf := make([]byte, 0, 64)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		buf, _ = Value(buf, oidText, FormatText, v, false)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cells/s")
}

// BenchmarkDetectNoHit is the cost of scanning a value no rule names and
// that holds nothing: the common case for detectors.
func BenchmarkDetectNoHit(b *testing.B) {
	all, _ := NewDetectors(policies.Detectors)
	v := []byte("Shipped to the warehouse on Tuesday, order 42 of 7")
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		all.Find(v)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "cells/s")
}
