package postgres

import (
	"bytes"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

func encodeAll(t testing.TB, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// drain feeds chunks to a framer and returns every whole message's bytes.
func drain(t testing.TB, f *framer, chunks [][]byte) ([][]byte, error) {
	t.Helper()
	var out [][]byte
	for _, c := range chunks {
		f.push(c)
		for {
			fr, ok, err := f.next()
			if err != nil {
				return out, err
			}
			if !ok {
				break
			}
			out = append(out, append([]byte(nil), fr.raw...))
			if fr.kind == frameStartup && fr.code() >= codeProtocol30 && fr.code() <= codeProtocol32 {
				f.expect = frameTyped
			}
		}
		f.retain()
	}
	return out, nil
}

func TestFramerChunking(t *testing.T) {
	startup := encodeAll(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "a"}})
	typed := [][]byte{
		encodeAll(t, &pgproto3.Query{String: "select 1"}),
		encodeAll(t, &pgproto3.Sync{}),
		encodeAll(t, &pgproto3.Query{String: string(bytes.Repeat([]byte("x"), 5000))}),
		encodeAll(t, &pgproto3.Terminate{}),
	}
	stream := append([]byte(nil), startup...)
	want := [][]byte{startup}
	for _, m := range typed {
		stream = append(stream, m...)
		want = append(want, m)
	}
	splits := map[string][][]byte{
		"one chunk":    {stream},
		"bytewise":     nil,
		"header split": {stream[:2], stream[2 : len(startup)+3], stream[len(startup)+3:]},
		"body split":   {stream[:len(startup)+7], stream[len(startup)+7:]},
		"with empties": {{}, stream[:10], {}, stream[10:], {}},
	}
	for i := range stream {
		splits["bytewise"] = append(splits["bytewise"], stream[i:i+1])
	}
	for name, chunks := range splits {
		t.Run(name, func(t *testing.T) {
			f := &framer{expect: frameStartup}
			got, err := drain(t, f, chunks)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want) {
				t.Fatalf("got %d messages, want %d", len(got), len(want))
			}
			for i := range want {
				if !bytes.Equal(got[i], want[i]) {
					t.Fatalf("message %d differs", i)
				}
			}
			if f.buffered() != 0 {
				t.Fatalf("%d bytes left", f.buffered())
			}
		})
	}
}

// A partial message kept across pushes must survive the caller reusing the
// chunk it came in.
func TestFramerRetainCopies(t *testing.T) {
	msg := encodeAll(t, &pgproto3.Query{String: "select 42"})
	chunk := append([]byte(nil), msg[:7]...)
	f := &framer{}
	f.push(chunk)
	if _, ok, _ := f.next(); ok {
		t.Fatal("a partial message was returned")
	}
	f.retain()
	for i := range chunk {
		chunk[i] = 0xff
	}
	f.push(msg[7:])
	fr, ok, err := f.next()
	if err != nil || !ok || !bytes.Equal(fr.raw, msg) {
		t.Fatalf("got %q %v %v, want %q", fr.raw, ok, err, msg)
	}
}

func TestFramerLimits(t *testing.T) {
	for _, tc := range []struct {
		name   string
		expect frameKind
		max    int
		data   []byte
	}{
		{"startup too short", frameStartup, 0, []byte{0, 0, 0, 4, 0, 3, 0, 0}},
		{"startup too long", frameStartup, 0, []byte{0, 0, 0x27, 0x11}},
		{"typed length under 4", frameTyped, 0, []byte{'Q', 0, 0, 0, 3}},
		{"typed over max", frameTyped, 100, []byte{'p', 0, 0, 0, 105}},
		{"typed negative", frameTyped, 0, []byte{'Q', 0xff, 0xff, 0xff, 0xff}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &framer{expect: tc.expect, max: tc.max}
			f.push(tc.data)
			_, _, err := f.next()
			var fe *FrameError
			if !errors.As(err, &fe) {
				t.Fatalf("err = %v, want a FrameError", err)
			}
		})
	}
	// At the limit is fine.
	f := &framer{max: 100}
	f.push(append([]byte{'p', 0, 0, 0, 104}, make([]byte, 100)...))
	if _, ok, err := f.next(); !ok || err != nil {
		t.Fatalf("a message at the limit: %v %v", ok, err)
	}
}

func TestFramerSingleByte(t *testing.T) {
	f := &framer{expect: frameByte}
	f.push([]byte{'N'})
	fr, ok, err := f.next()
	if !ok || err != nil || fr.kind != frameByte || fr.typ != 'N' {
		t.Fatalf("got %+v %v %v", fr, ok, err)
	}
}
