package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// readySession drives a session through a cleartext login.
func readySession(tb testing.TB) *Session {
	tb.Helper()
	s := New(testConfig())
	ctx := context.Background()
	s.FromClient(ctx, encodeAll(tb, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "agent-1"}}), false)
	s.FromServer(ctx, encodeAll(tb, &pgproto3.AuthenticationCleartextPassword{}), false)
	s.FromClient(ctx, encodeAll(tb, &pgproto3.PasswordMessage{Password: "good-token"}), false)
	s.FromServer(ctx, encodeAll(tb, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if !s.Ready() {
		tb.Fatalf("session is %s, not ready", s.Phase())
	}
	return s
}

// BenchmarkSimpleQuery is the session's share of one simple-protocol
// statement (design.md section 10's budget is 25 µs CPU including the SQL
// analysis and the decision, which the MarkerGate here stands in for):
// frame and gate the Query, frame and pass a one-row result.
func BenchmarkSimpleQuery(b *testing.B) {
	s := readySession(b)
	ctx := context.Background()
	q := encodeAll(b, &pgproto3.Query{String: "SELECT id, name FROM items WHERE id = 1"})
	res := encodeAll(b,
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("id"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}, {Name: []byte("name"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1"), []byte("anvil")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	b.ReportAllocs()
	b.SetBytes(int64(len(q) + len(res)))
	for b.Loop() {
		s.FromClient(ctx, q, false)
		s.FromServer(ctx, res, false)
	}
}

// BenchmarkDataRows is the cost per row of a result passing through: 100
// rows per chunk, within one open result set.
func BenchmarkDataRows(b *testing.B) {
	benchRows(b, readySession(b))
}

// BenchmarkMaskedDataRows is the same with a masking plan: one column
// masked by rule, the e-mail detector over the other two.
func BenchmarkMaskedDataRows(b *testing.B) {
	benchRows(b, loggedIn(b, planGate{emailPlan(b)}))
}

func benchRows(b *testing.B, s *Session) {
	ctx := context.Background()
	s.FromClient(ctx, encodeAll(b, &pgproto3.Query{String: "SELECT id, email, note FROM customers"}), false)
	s.FromServer(ctx, encodeAll(b, &pgproto3.RowDescription{Fields: customerFields}), false)
	var chunk []byte
	for range 100 {
		chunk = append(chunk, encodeAll(b, &pgproto3.DataRow{Values: [][]byte{[]byte("12345"), []byte("someone@example.com"), []byte("a longer text value of some forty bytes")}})...)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		if r := s.FromServer(ctx, chunk, false); len(r.Data) == 0 || r.EndOfStream {
			b.Fatalf("session ended: %s", r.Reason)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*100), "ns/row")
}
