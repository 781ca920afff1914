package postgres

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// FuzzFramer: however a byte stream is cut into chunks, the framer yields
// the same messages (or the same error) as from the stream in one piece.
func FuzzFramer(f *testing.F) {
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47}, uint8(3))
	f.Add(append(encodeAll(f, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "a"}}), 'Q', 0, 0, 0, 5, 0, 'X', 0, 0, 0, 4), uint8(1))
	f.Fuzz(func(t *testing.T, stream []byte, cut uint8) {
		whole, errWhole := drain(t, &framer{expect: frameStartup}, [][]byte{stream})
		var chunks [][]byte
		step := int(cut%16) + 1
		for i := 0; i < len(stream); i += step {
			chunks = append(chunks, stream[i:min(i+step, len(stream))])
		}
		parts, errParts := drain(t, &framer{expect: frameStartup}, chunks)
		if (errWhole == nil) != (errParts == nil) {
			t.Fatalf("whole: %v, in chunks of %d: %v", errWhole, step, errParts)
		}
		if len(whole) != len(parts) {
			t.Fatalf("whole: %d messages, chunked: %d", len(whole), len(parts))
		}
		for i := range whole {
			if !bytes.Equal(whole[i], parts[i]) {
				t.Fatalf("message %d differs", i)
			}
		}
	})
}

// FuzzSession drives a session with arbitrary chunks from both sides. The
// input is a run of records: a flags byte (bit 0: from the server; bit 1:
// end_of_stream), a big-endian uint16 length, then that many bytes. The
// session must not panic, must answer every chunk with data present
// (possibly empty), and never both close and carry bytes.
func FuzzSession(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/conversations/*.txt")
	for _, path := range seeds {
		f.Add(fuzzInput(loadConversation(f, path)))
	}
	// The same chunks also reach a session of a target Envoy speaks TLS
	// to with a client certificate, whose first exchange differs.
	tlsConfig := testConfig()
	tlsConfig.Upstream.TLS, tlsConfig.Upstream.ClientCert = true, true
	f.Fuzz(func(t *testing.T, in []byte) {
		fuzzSessions(t, in, New(testConfig()), New(testConfig()))
		fuzzSessions(t, in, New(tlsConfig), New(tlsConfig))
	})
}

// FuzzMaskingSession feeds arbitrary chunks to a logged-in session whose
// statements carry a masking plan and a row budget, so that the tracker,
// the row masker and the COPY masker see hostile server answers and
// client messages.
func FuzzMaskingSession(f *testing.F) {
	plan := func(t testing.TB) Gate {
		p := emailPlan(t)
		p.MaxRows, p.MaxBytes = 3, 1000
		return planGate{p}
	}
	q := func(m ...pgproto3.Message) []byte {
		var b []byte
		for _, x := range m {
			b, _ = x.Encode(b)
		}
		return b
	}
	seed := func(client, server []byte) []byte {
		var in []byte
		in = append(in, 0, byte(len(client)>>8), byte(len(client)))
		in = append(in, client...)
		in = append(in, 1, byte(len(server)>>8), byte(len(server)))
		return append(in, server...)
	}
	f.Add(seed(q(&pgproto3.Query{String: "SELECT id, email, note FROM customers"}), q(&pgproto3.RowDescription{Fields: customerFields},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1"), []byte("alice@example.com"), []byte("x bob@example.org")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})))
	f.Add(seed(q(&pgproto3.Parse{Query: "SELECT 1"}, &pgproto3.Bind{ResultFormatCodes: []int16{1}}, &pgproto3.Execute{}, &pgproto3.Sync{}),
		q(&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{Fields: customerFields},
			&pgproto3.DataRow{Values: [][]byte{{0, 0, 0, 1}, []byte("a@b.co"), nil}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
			&pgproto3.ReadyForQuery{TxStatus: 'I'})))
	f.Add(seed(q(&pgproto3.Query{String: "COPY customers TO STDOUT"}), q(&pgproto3.CopyOutResponse{ColumnFormatCodes: []uint16{0, 0}},
		&pgproto3.CopyData{Data: []byte("1\ta@b.co\n")}, &pgproto3.CopyDone{}, &pgproto3.CommandComplete{CommandTag: []byte("COPY 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})))
	f.Fuzz(func(t *testing.T, in []byte) {
		fuzzSessions(t, in, loggedIn(t, plan(t)), loggedIn(t, plan(t)))
	})
}

// fuzzSessions runs one fuzz input through s whole and through split with
// every chunk cut in two, checking the session's invariants.
func fuzzSessions(t *testing.T, in []byte, s, split *Session) {
	{
		ctx := context.Background()
		feed := func(s *Session, server bool, b []byte, eos bool) Reply {
			if server {
				return s.FromServer(ctx, b, eos)
			}
			return s.FromClient(ctx, b, eos)
		}
		closed := false
		for len(in) >= 3 {
			flags, n := in[0], int(binary.BigEndian.Uint16(in[1:3]))
			in = in[3:]
			n = min(n, len(in))
			chunk := in[:n]
			in = in[n:]
			server, eos := flags&1 != 0, flags&2 != 0
			r := feed(s, server, chunk, eos)
			// The same bytes in two chunks: the two replies together must
			// be the one reply, since a message's meaning does not depend
			// on where a read event cut the stream.
			if !closed {
				cut := len(chunk) / 2
				a := feed(split, server, chunk[:cut], false)
				var joined []byte
				joined = append(joined, a.Data...)
				if !a.Close {
					b := feed(split, server, chunk[cut:], eos)
					joined = append(joined, b.Data...)
					a.Close, a.EndOfStream = b.Close, a.EndOfStream || b.EndOfStream
				}
				if a.Close != r.Close || (!r.Close && (!bytes.Equal(joined, r.Data) || a.EndOfStream != r.EndOfStream)) {
					t.Fatalf("chunk %x: whole %q close=%v eos=%v; split %q close=%v eos=%v", chunk, r.Data, r.Close, r.EndOfStream, joined, a.Close, a.EndOfStream)
				}
			}
			if r.Data == nil {
				t.Fatal("a reply without data")
			}
			if r.Close && len(r.Data) > 0 {
				t.Fatal("a close that carries bytes")
			}
			if closed && len(r.Data) > 0 {
				t.Fatal("bytes after the connection was closed")
			}
			closed = closed || r.Close
		}
	}
}

// fuzzInput encodes a conversation as FuzzSession's input.
func fuzzInput(steps []step) []byte {
	var b []byte
	for _, st := range steps {
		flags := byte(0)
		if st.dir == "server" {
			flags |= 1
		}
		if st.eos {
			flags |= 2
		}
		b = append(b, flags)
		b = binary.BigEndian.AppendUint16(b, uint16(len(st.chunk)))
		b = append(b, st.chunk...)
	}
	return b
}

// TestWriteFuzzSeeds refreshes the committed seed corpus from the
// conversations: SLUICE_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("SLUICE_WRITE_FUZZ_SEEDS") != "1" {
		t.Skip("set SLUICE_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzSession")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob("testdata/conversations/*.txt")
	for _, path := range paths {
		in := fuzzInput(loadConversation(t, path))
		name := strings.TrimSuffix(filepath.Base(path), ".txt")
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	fdir := filepath.Join("testdata", "fuzz", "FuzzFramer")
	if err := os.MkdirAll(fdir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, path := range paths {
		var stream []byte
		for _, st := range loadConversation(t, path) {
			if st.dir == "client" {
				stream = append(stream, st.chunk...)
			}
		}
		name := strings.TrimSuffix(filepath.Base(path), ".txt")
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\nbyte('\\x02')\n", stream)
		if err := os.WriteFile(filepath.Join(fdir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
