package audit

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// fuzzEvent builds an event from fuzz input: s fills the string fields
// (split on NUL, reused round-robin), n the numbers and bits which of the
// optional fields are set, so that every omitempty combination occurs.
func fuzzEvent(s string, n int64, bits uint32) Event {
	parts := strings.Split(s, "\x00")
	i := 0
	str := func() string {
		v := parts[i%len(parts)]
		i++
		if bits&(1<<(i%32)) == 0 {
			return ""
		}
		return v
	}
	list := func() []string {
		if bits&(1<<((i+7)%32)) == 0 {
			return nil
		}
		return []string{str(), str()}
	}
	e := Event{
		Time:      time.Unix(n%(1<<34), n%1e9).In(time.FixedZone("x", int(n%50000))),
		Kind:      Kind(str()),
		SessionID: str(), RequestID: str(),
		Principal: policies.Principal{Issuer: str(), Subject: str(), Groups: list(), Client: str(), OnBehalfOf: str()},
		Actor:     str(), Target: str(), Source: str(), Request: str(),
		Tables: list(), Decision: str(), Reason: str(), MaskedColumns: list(),
		Rows: n, Bytes: -n, Duration: time.Duration(n * 3),
		Error: str(), SQLState: str(), GrantID: str(), TraceID: str(),
		HTTPStatus: int(n % 600), Digest: str(), Fingerprint: str(),
	}
	for c := policies.ClassRead; c <= policies.ClassUnknown; c++ {
		if bits&(1<<(int(c)+20)) != 0 {
			e.Classes = append(e.Classes, c)
		}
	}
	if bits&1 == 0 { // sometimes every number zero, so every int is omitted
		e.Rows, e.Bytes, e.Duration, e.HTTPStatus = 0, 0, 0, 0
	}
	return e
}

// FuzzEncodeEventMatchesEncodingJSON holds the hand-written encoder to
// encoding/json's bytes, which records written before it were hashed over.
func FuzzEncodeEventMatchesEncodingJSON(f *testing.F) {
	f.Add("SELECT 1\x00agent\x00orders-db", int64(1732700000), uint32(0xffffffff))
	f.Add("", int64(0), uint32(0))
	f.Add("a\"b\\c\x00\x01\x08\x0c\n\r\t\x1f\x7f\x00<&>\u2028\u2029\x00\xff\xfe bad utf8 \xe2\x80\x00é日本🙂", int64(-5), uint32(0xaaaaaaaa))
	f.Add("\xed\xa0\x80 surrogate\x00\xf4\x90\x80\x80 too big\x00\xc0\xaf overlong", int64(1<<40), uint32(0x55555555))
	f.Fuzz(func(t *testing.T, s string, n int64, bits uint32) {
		e := fuzzEvent(s, n, bits)
		want, wantErr := marshal(toJSON(e))
		got, gotErr := appendEventJSON(nil, e)
		if (wantErr != nil) != (gotErr != nil) {
			t.Fatalf("errors differ: encoding/json %v, appendEventJSON %v", wantErr, gotErr)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("encodings differ:\n got %s\nwant %s", got, want)
		}
	})
}

// TestEncodeEventYearOutOfRange: a time RFC 3339 cannot write is an error,
// as it is for encoding/json, not a record with a malformed time.
func TestEncodeEventYearOutOfRange(t *testing.T) {
	e := Event{Time: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), Kind: KindStatement}
	if _, err := appendEventJSON(nil, e); err == nil {
		t.Fatal("year 10000 encoded without error")
	}
	if _, err := encodeEvent(e); err == nil {
		t.Fatal("encodeEvent accepted year 10000")
	}
}

func BenchmarkEncodeEvent(b *testing.B) {
	ev := statement("agent-1", "orders-db", "SELECT id, status, total FROM orders WHERE customer_id = $1 ORDER BY id DESC LIMIT 50", policies.ClassRead)
	ev.MaskedColumns = []string{"customers.email"}
	ev.Time = time.Now()
	b.Run("reflection", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := marshal(toJSON(ev)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendEventJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := encodeEvent(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}
