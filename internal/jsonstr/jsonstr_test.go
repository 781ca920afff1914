package jsonstr

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzAppend holds Append to encoding/json's bytes, for string and []byte
// input alike.
func FuzzAppend(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\s/", "\x00\x1f\n\r\t\b\f\x7f", "<&>", "é\u2028\u2029🙂",
		"\xff\xfe bad \xc3", "\ud7ff", "\xed\xa0\x80", "\xf4\x90\x80\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var want bytes.Buffer
		enc := json.NewEncoder(&want)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(s); err != nil {
			t.Fatal(err)
		}
		w := bytes.TrimSuffix(want.Bytes(), []byte("\n"))
		if got := Append([]byte("x"), s); !bytes.Equal(got[1:], w) {
			t.Fatalf("Append(string %q) = %s, encoding/json %s", s, got[1:], w)
		}
		if got := Append(nil, []byte(s)); !bytes.Equal(got, w) {
			t.Fatalf("Append([]byte %q) = %s, encoding/json %s", s, got, w)
		}
	})
}

func BenchmarkAppend(b *testing.B) {
	s := "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 50"
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = Append(buf[:0], s)
	}
}
