package postgres

import (
	"bytes"
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/filters/mask"
	"github.com/sluicehq/sluice/policies"
)

// planGate allows everything with one plan.
type planGate struct{ plan *ResultPlan }

func (g planGate) Decide(context.Context, Statement) Verdict {
	v := Allow()
	v.Results = g.plan
	return v
}

// emailPlan masks every column named "email" (standing in for lineage)
// and runs the e-mail detector on the rest.
func emailPlan(t testing.TB) *ResultPlan {
	d, err := mask.NewDetectors([]string{mask.Email})
	if err != nil {
		t.Fatal(err)
	}
	return &ResultPlan{
		MaskColumn: func(_, _, _ int, name string) bool { return name == "email" || name == "" },
		Detectors:  d,
	}
}

func enc(t testing.TB, msgs ...pgproto3.Message) []byte {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		var err error
		if out, err = m.Encode(out); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// loggedIn logs a session in (cleartext upstream) and returns it ready.
func loggedIn(t testing.TB, gate Gate) *Session {
	t.Helper()
	cfg := testConfig()
	cfg.Gate = gate
	s := New(cfg)
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "agent-1"}}), false)
	s.FromServer(ctx, enc(t, &pgproto3.AuthenticationCleartextPassword{}), false)
	s.FromClient(ctx, enc(t, &pgproto3.PasswordMessage{Password: "good-token"}), false)
	s.FromServer(ctx, enc(t, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if !s.Ready() {
		t.Fatalf("session not ready: %s", s.Phase())
	}
	return s
}

// decodeAll splits bytes the client gets into messages.
func decodeAll(t testing.TB, b []byte) []pgproto3.BackendMessage {
	t.Helper()
	var out []pgproto3.BackendMessage
	f := pgproto3.NewFrontend(bytes.NewReader(b), nil)
	for {
		m, err := f.Receive()
		if err != nil {
			return out
		}
		// Receive reuses its messages: keep a copy by re-encoding.
		raw, _ := m.Encode(nil)
		cp := backendCopy(t, raw)
		out = append(out, cp)
	}
}

func backendCopy(t testing.TB, raw []byte) pgproto3.BackendMessage {
	f := pgproto3.NewFrontend(bytes.NewReader(raw), nil)
	m, err := f.Receive()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func types(msgs []pgproto3.BackendMessage) string {
	var b strings.Builder
	for _, m := range msgs {
		raw, _ := m.Encode(nil)
		b.WriteByte(raw[0])
	}
	return b.String()
}

var customerFields = []pgproto3.FieldDescription{
	{Name: []byte("id"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1},
	{Name: []byte("email"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
	{Name: []byte("note"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
}

// TestMaskSimpleQueryRows: a rule-masked column keeps its shape, the
// detector redacts inside the others, the rest passes, and the run's
// outcome names the masked column.
func TestMaskSimpleQueryRows(t *testing.T) {
	var got []Outcome
	plan := emailPlan(t)
	s := loggedIn(t, GateFunc(func(context.Context, Statement) Verdict {
		v := Allow()
		v.Results, v.Finished = plan, func(o Outcome) { got = append(got, o) }
		return v
	}))
	ctx := context.Background()
	r := s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT id, email, note FROM customers"}), false)
	if !bytes.Contains(r.Data, []byte("SELECT id")) {
		t.Fatalf("query not forwarded: %q", r.Data)
	}
	r = s.FromServer(ctx, enc(t, &pgproto3.RowDescription{Fields: customerFields},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1"), []byte("alice@example.com"), []byte("mail bob@example.org now")}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("2"), nil, []byte("vip")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	msgs := decodeAll(t, r.Data)
	if types(msgs) != "TDDCZ" {
		t.Fatalf("client got %q", types(msgs))
	}
	row := msgs[1].(*pgproto3.DataRow)
	if string(row.Values[0]) != "1" || string(row.Values[1]) != "xxxxx@xxxxxxx.xxx" || string(row.Values[2]) != "mail xxx@xxxxxxx.xxx now" {
		t.Errorf("row 1 = %q", row.Values)
	}
	if row := msgs[2].(*pgproto3.DataRow); row.Values[1] != nil || string(row.Values[2]) != "vip" {
		t.Errorf("row 2 = %q (NULL stays NULL, clean values pass)", row.Values)
	}
	if len(got) != 1 || got[0].Rows != 2 || strings.Join(got[0].Masked, ",") != "email" {
		t.Errorf("outcome %+v", got)
	}
}

// TestMaskExtendedAsksForDescription: an Execute whose rows must be masked
// and whose description sluice has not seen gets a Describe sluice sends
// on its own; its answer never reaches the client, and binary rows are
// masked with their types.
func TestMaskExtendedAsksForDescription(t *testing.T) {
	s := loggedIn(t, planGate{emailPlan(t)})
	ctx := context.Background()
	r := s.FromClient(ctx, enc(t,
		&pgproto3.Parse{Query: "SELECT id, email, note FROM customers WHERE id = $1"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}, ResultFormatCodes: []int16{1}},
		&pgproto3.Execute{},
		&pgproto3.Sync{}), false)
	want := enc(t,
		&pgproto3.Parse{Query: "SELECT id, email, note FROM customers WHERE id = $1"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("1")}, ResultFormatCodes: []int16{1}},
		&pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{},
		&pgproto3.Sync{})
	if !bytes.Equal(r.Data, want) {
		t.Fatalf("server got %q\nwant %q", r.Data, want)
	}
	bin := make([]pgproto3.FieldDescription, len(customerFields))
	copy(bin, customerFields)
	for i := range bin {
		bin[i].Format = 1
	}
	r = s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: bin},
		&pgproto3.DataRow{Values: [][]byte{{0, 0, 0, 1}, []byte("alice@example.com"), []byte("ok")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	msgs := decodeAll(t, r.Data)
	if types(msgs) != "12DCZ" {
		t.Fatalf("client got %q, want no RowDescription it did not ask for", types(msgs))
	}
	row := msgs[2].(*pgproto3.DataRow)
	if !bytes.Equal(row.Values[0], []byte{0, 0, 0, 1}) || string(row.Values[1]) != "xxxxx@xxxxxxx.xxx" {
		t.Errorf("row = %q", row.Values)
	}
	if len(s.track.ops) != 0 {
		t.Errorf("ops left: %+v", s.track.ops)
	}
}

// TestExtendedErrorSkipsToSync: after an extended-protocol error the
// server answers nothing up to Sync; the tracker drops those messages and
// the next statement is followed correctly.
func TestExtendedErrorSkipsToSync(t *testing.T) {
	s := loggedIn(t, planGate{emailPlan(t)})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Query: "SELEC"}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'},
		&pgproto3.Execute{}, &pgproto3.Sync{}), false)
	r := s.FromServer(ctx, enc(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: "syntax error"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if types(decodeAll(t, r.Data)) != "EZ" || len(s.track.ops) != 0 {
		t.Fatalf("client got %q, ops left %d", types(decodeAll(t, r.Data)), len(s.track.ops))
	}
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT email FROM customers"}), false)
	r = s.FromServer(ctx, enc(t, &pgproto3.RowDescription{Fields: customerFields[1:2]},
		&pgproto3.DataRow{Values: [][]byte{[]byte("a@b.co")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	msgs := decodeAll(t, r.Data)
	if types(msgs) != "TDCZ" || string(msgs[1].(*pgproto3.DataRow).Values[0]) != "x@x.xx" {
		t.Fatalf("after the error: %q", msgs)
	}
}

// TestUnplacedAnswerEndsSession: a server message no client message asked
// for means sluice lost track; rather than pass rows it cannot place, it
// ends the session with a FATAL that says so.
func TestUnplacedAnswerEndsSession(t *testing.T) {
	s := loggedIn(t, planGate{emailPlan(t)})
	r := s.FromServer(context.Background(), enc(t, &pgproto3.DataRow{Values: [][]byte{[]byte("alice@example.com")}}), false)
	msgs := decodeAll(t, r.Data)
	if len(msgs) != 1 || !r.EndOfStream {
		t.Fatalf("client got %q eos %v", types(msgs), r.EndOfStream)
	}
	e := msgs[0].(*pgproto3.ErrorResponse)
	if e.Severity != "FATAL" || e.Code != codeProtocolViolation || bytes.Contains(r.Data, []byte("alice")) {
		t.Fatalf("got %+v", e)
	}
}

// TestMalformedStatementMessages: Query, Parse and FunctionCall sluice
// cannot decode never reach the server as sent; a malformed Bind ends the
// session.
func TestMalformedStatementMessages(t *testing.T) {
	ctx := context.Background()
	for _, typ := range []byte{'Q', 'P', 'F'} {
		s := loggedIn(t, planGate{})
		bad := []byte{typ, 0, 0, 0, 7, 'a', 'b', 'c'} // no NUL terminator
		r := s.FromClient(ctx, bad, false)
		if bytes.Contains(r.Data, []byte("abc")) || len(r.Data) == 0 {
			t.Errorf("%c: server got %q", typ, r.Data)
		}
	}
	s := loggedIn(t, planGate{})
	r := s.FromClient(ctx, []byte{'B', 0, 0, 0, 6, 'x', 0}, false)
	if !r.Close {
		t.Errorf("malformed Bind: %+v, want the connection closed", r)
	}
}

// TestResultBudget: rows past max_rows are dropped and the client gets
// 54000 in place of the CommandComplete; the session goes on.
func TestResultBudget(t *testing.T) {
	s := loggedIn(t, planGate{&ResultPlan{MaxRows: 2, Policies: "small"}})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT g FROM generate_series(1, 5) g"}), false)
	in := []pgproto3.Message{&pgproto3.RowDescription{Fields: customerFields[:1]}}
	for i := range 5 {
		in = append(in, &pgproto3.DataRow{Values: [][]byte{{byte('1' + i)}}})
	}
	in = append(in, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 5")}, &pgproto3.ReadyForQuery{TxStatus: 'I'})
	msgs := decodeAll(t, s.FromServer(ctx, enc(t, in...), false).Data)
	if types(msgs) != "TDDEZ" {
		t.Fatalf("client got %q", types(msgs))
	}
	if e := msgs[3].(*pgproto3.ErrorResponse); e.Code != "54000" || !strings.Contains(e.Message, "max_rows 2 set by policy small") {
		t.Errorf("error %+v", e)
	}
}

// TestMaskCopyOut: COPY TO STDOUT rows in text format are masked field by
// field; binary COPY with masking is refused without passing a row.
func TestMaskCopyOut(t *testing.T) {
	s := loggedIn(t, planGate{emailPlan(t)})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "COPY customers TO STDOUT"}), false)
	msgs := decodeAll(t, s.FromServer(ctx, enc(t, &pgproto3.CopyOutResponse{ColumnFormatCodes: []uint16{0, 0, 0}},
		&pgproto3.CopyData{Data: []byte("1\talice@example.com\tsee\\tbob@example.org\n")},
		&pgproto3.CopyData{Data: []byte("2\t\\N\tvip\n")},
		&pgproto3.CopyDone{}, &pgproto3.CommandComplete{CommandTag: []byte("COPY 2")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false).Data)
	if types(msgs) != "HddcCZ" {
		t.Fatalf("client got %q", types(msgs))
	}
	// COPY names no columns: every column is masked by rule (fail closed).
	if got := string(msgs[1].(*pgproto3.CopyData).Data); got != "0\txxxxx@xxxxxxx.xxx\txxx\\txxx@xxxxxxx.xxx\n" {
		t.Errorf("row 1 = %q", got)
	}
	if got := string(msgs[2].(*pgproto3.CopyData).Data); got != "0\t\\N\txxx\n" {
		t.Errorf("row 2 = %q", got)
	}

	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "COPY customers TO STDOUT (FORMAT binary)"}), false)
	r := s.FromServer(ctx, enc(t, &pgproto3.CopyOutResponse{OverallFormat: 1, ColumnFormatCodes: []uint16{1, 1, 1}},
		&pgproto3.CopyData{Data: []byte("PGCOPY\n\xff\r\n\x00alice@example.com")},
		&pgproto3.CopyDone{}, &pgproto3.CommandComplete{CommandTag: []byte("COPY 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if msgs := decodeAll(t, r.Data); types(msgs) != "HEZ" || bytes.Contains(r.Data, []byte("alice")) {
		t.Fatalf("binary COPY: client got %q", types(msgs))
	}
}

// TestMillionRowsFlatMemory streams 1,000,000 masked rows through a
// session in 64 KiB chunks, as Envoy would deliver them: the heap after a
// million rows is what it was after ten thousand.
func TestMillionRowsFlatMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams a million rows")
	}
	s := loggedIn(t, planGate{emailPlan(t)})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT id, email, note FROM customers"}), false)
	s.FromServer(ctx, enc(t, &pgproto3.RowDescription{Fields: customerFields}), false)
	row := enc(t, &pgproto3.DataRow{Values: [][]byte{[]byte("123456"), []byte("someone.long@example.com"), []byte("a note without mail")}})
	chunk := bytes.Repeat(row, 64<<10/len(row))
	chunk = append(chunk, row[:len(row)/2]...) // a row split across chunks
	perChunk := 64 << 10 / len(row)
	var sent, masked int
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	var base uint64
	first := true
	for sent < 1_000_000 {
		data := chunk
		if !first {
			data = append(row[len(row)/2:len(row):len(row)], chunk...)
		}
		r := s.FromServer(ctx, data, false)
		n := bytes.Count(r.Data, []byte("xxxxxxx.xxxx@xxxxxxx.xxx"))
		if bytes.Contains(r.Data, []byte("someone")) {
			t.Fatal("an unmasked e-mail reached the client")
		}
		masked += n
		sent += perChunk
		if !first || sent > 10_000 {
			if base == 0 && sent > 10_000 {
				base = heap()
			}
		}
		first = false
	}
	after := heap()
	if masked < 1_000_000 {
		t.Fatalf("masked %d rows, want at least 1,000,000", masked)
	}
	if after > base+8<<20 {
		t.Errorf("heap grew from %d to %d bytes over a million rows", base, after)
	}
	t.Logf("%d rows masked; heap %d KiB after 10k rows, %d KiB after 1M", masked, base>>10, after>>10)
}

// TestMaskErrorDetails: an error of a masked statement may quote a value
// (a unique violation's DETAIL); with column rules the DETAIL is withheld,
// and detector hits are redacted in every field, in both protocols.
func TestMaskErrorDetails(t *testing.T) {
	s := loggedIn(t, planGate{emailPlan(t)})
	ctx := context.Background()
	dup := &pgproto3.ErrorResponse{Severity: "ERROR", Code: "23505", Message: "duplicate key value violates unique constraint \"customers_email_key\"",
		Detail: "Key (email)=(alice@example.com) already exists."}
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "INSERT INTO customers (email) VALUES ('alice@example.com') RETURNING email"}), false)
	r := s.FromServer(ctx, enc(t, dup, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if bytes.Contains(r.Data, []byte("alice")) || !bytes.Contains(r.Data, []byte("23505")) {
		t.Fatalf("simple: client got %q", r.Data)
	}
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Query: "INSERT INTO customers (email) VALUES ($1) RETURNING email"},
		&pgproto3.Bind{Parameters: [][]byte{[]byte("alice@example.com")}}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}), false)
	r = s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{Fields: customerFields[1:2]},
		&pgproto3.NoticeResponse{Severity: "NOTICE", Code: "00000", Message: "saw bob@example.org"},
		dup, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if bytes.Contains(r.Data, []byte("alice")) || bytes.Contains(r.Data, []byte("bob@")) || types(decodeAll(t, r.Data)) != "12TNEZ" {
		t.Fatalf("extended: client got %q", r.Data)
	}
	// A field of a code Postgres does not document is dropped: sluice
	// cannot scrub what it cannot name (found by FuzzMaskingSession, when
	// pgproto3 re-encoded two such fields in map order).
	odd := &pgproto3.ErrorResponse{Severity: "ERROR", Code: "XX000", Message: "m",
		UnknownFields: map[byte]string{'0': "alice@example.com", '2': "x"}}
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT email FROM customers"}), false)
	r = s.FromServer(ctx, enc(t, odd, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	got := decodeAll(t, r.Data)
	if e, ok := got[0].(*pgproto3.ErrorResponse); !ok || len(e.UnknownFields) != 0 || e.Code != "XX000" || bytes.Contains(r.Data, []byte("alice")) {
		t.Fatalf("unknown fields: client got %q", r.Data)
	}
}

// TestBudgetSpansExecutes: a portal read a row at a time (a fetch size)
// spends one budget, so Execute with a row limit cannot walk past it.
func TestBudgetSpansExecutes(t *testing.T) {
	s := loggedIn(t, planGate{&ResultPlan{MaxRows: 2}})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Query: "SELECT g FROM generate_series(1, 5) g"}, &pgproto3.Bind{},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{MaxRows: 1}, &pgproto3.Execute{MaxRows: 1},
		&pgproto3.Execute{MaxRows: 1}, &pgproto3.Sync{}), false)
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("1")}}
	r := s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{Fields: customerFields[:1]},
		row, &pgproto3.PortalSuspended{}, row, &pgproto3.PortalSuspended{}, row, &pgproto3.PortalSuspended{},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if got := types(decodeAll(t, r.Data)); got != "12TDsDsEZ" {
		t.Fatalf("client got %q, want the third row refused", got)
	}
}

// expiringAuth accepts one token that expires at a fixed time.
type expiringAuth struct{ exp time.Time }

func (a expiringAuth) Authenticate(context.Context, Login) (Identity, error) {
	return Identity{Principal: policies.Principal{Subject: "agent-1"}, Expiry: a.exp}, nil
}

// TestTokenExpiryStopsStatements: once the session's token has expired,
// the next statement is refused with a reason to reconnect, in both
// protocols, although the server's session would go on.
func TestTokenExpiryStopsStatements(t *testing.T) {
	exp := time.Date(2026, 11, 27, 9, 0, 0, 0, time.UTC)
	now := exp.Add(-time.Minute)
	cfg := testConfig()
	cfg.Auth, cfg.Gate, cfg.Now = expiringAuth{exp}, planGate{}, func() time.Time { return now }
	s := New(cfg)
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": "agent-1"}}), false)
	s.FromServer(ctx, enc(t, &pgproto3.AuthenticationCleartextPassword{}), false)
	s.FromClient(ctx, enc(t, &pgproto3.PasswordMessage{Password: "any"}), false)
	s.FromServer(ctx, enc(t, &pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	q := enc(t, &pgproto3.Query{String: "SELECT 1"})
	if r := s.FromClient(ctx, q, false); !bytes.Equal(r.Data, q) {
		t.Fatalf("before expiry: server got %q", r.Data)
	}
	s.FromServer(ctx, enc(t, &pgproto3.EmptyQueryResponse{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	now = exp
	for _, m := range []pgproto3.Message{&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Parse{Query: "SELECT 1"}} {
		r := s.FromClient(ctx, enc(t, m), false)
		if bytes.Contains(r.Data, []byte("SELECT 1")) || !bytes.Contains(r.Data, []byte("sluice")) {
			t.Fatalf("after expiry: server got %q", r.Data)
		}
		if d := s.denials[len(s.denials)-1]; !strings.Contains(d.verdict.Reason, "token expired at 2026-11-27T09:00:00Z") {
			t.Errorf("denial %+v", d.verdict)
		}
	}
}

// TestExecuteDecidedEachRun: a prepared statement is decided again at each
// Execute; a refused run is replaced by a Parse the server cannot parse,
// whose error the client gets in sluice's words where the Execute's answer
// was due. Nothing of the Execute reaches the server.
func TestExecuteDecidedEachRun(t *testing.T) {
	var runs []Statement
	gate := GateFunc(func(_ context.Context, st Statement) Verdict {
		if st.Protocol == ProtocolExecute {
			runs = append(runs, st)
			if len(runs) == 2 {
				return Deny("sluice: grant revoked", "", "")
			}
		}
		return Allow()
	})
	s := loggedIn(t, gate)
	ctx := context.Background()
	q := "UPDATE items SET name = $1 WHERE id = 3"
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Name: "s1", Query: q}, &pgproto3.Sync{}), false)
	s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	run := enc(t, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("x")}}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if r := s.FromClient(ctx, run, false); !bytes.Equal(r.Data, run) {
		t.Fatalf("first run: server got %q", r.Data)
	}
	s.FromServer(ctx, enc(t, &pgproto3.BindComplete{}, &pgproto3.CommandComplete{CommandTag: []byte("UPDATE 1")}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	r := s.FromClient(ctx, run, false)
	want := enc(t, &pgproto3.Bind{PreparedStatement: "s1", Parameters: [][]byte{[]byte("x")}},
		&pgproto3.Parse{Name: "sluice_denied_n0nce", Query: "sluice_denied_n0nce"}, &pgproto3.Sync{})
	if !bytes.Equal(r.Data, want) {
		t.Fatalf("refused run: server got %q\nwant %q", r.Data, want)
	}
	msgs := decodeAll(t, s.FromServer(ctx, enc(t, &pgproto3.BindComplete{},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: `syntax error at or near "sluice_denied_n0nce"`},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false).Data)
	if types(msgs) != "2EZ" {
		t.Fatalf("client got %q", types(msgs))
	}
	if e := msgs[1].(*pgproto3.ErrorResponse); e.Code != "42501" || e.Message != "sluice: grant revoked" {
		t.Errorf("error %+v", e)
	}
	if len(runs) != 2 || runs[0].SQL != q || runs[0].Name != "s1" {
		t.Errorf("runs decided: %+v", runs)
	}
	if len(s.track.ops) != 0 {
		t.Errorf("ops left: %+v", s.track.ops)
	}
}

// finishGate allows everything and keeps each run's outcome.
type finishGate struct{ out *[]Outcome }

func (g finishGate) Decide(context.Context, Statement) Verdict {
	v := Allow()
	v.Finished = func(o Outcome) { *g.out = append(*g.out, o) }
	return v
}

// TestOutcomes: each run reports its rows (from the completion tags), the
// bytes the client received, and its first SQLSTATE, once answered; in
// the extended protocol, runs skipped after an error report that error.
func TestOutcomes(t *testing.T) {
	var got []Outcome
	s := loggedIn(t, finishGate{&got})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Query{String: "SELECT id FROM t; UPDATE t SET x = 1"}), false)
	s.FromServer(ctx, enc(t, &pgproto3.RowDescription{Fields: customerFields[:1]},
		&pgproto3.DataRow{Values: [][]byte{[]byte("1")}}, &pgproto3.DataRow{Values: [][]byte{[]byte("22")}},
		&pgproto3.CommandComplete{CommandTag: []byte("SELECT 2")}, &pgproto3.CommandComplete{CommandTag: []byte("UPDATE 3")},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if len(got) != 1 || got[0].Rows != 5 || got[0].Bytes != 2*(2+4)+1+2 || got[0].SQLState != "" {
		t.Fatalf("simple: %+v", got)
	}
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Query: "SELECT 1/0"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}), false)
	s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22012", Message: "division by zero"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	if len(got) != 3 || got[1].SQLState != "22012" || got[2].SQLState != "22012" {
		t.Fatalf("extended: %+v", got)
	}
}

// TestRefusedRedefinitionDoesNotRunTheOldStatement: a refused Parse of a
// name already prepared leaves the earlier statement on the server; a Bind
// of that name binds it. Its Execute is decided again (on the refused
// text) and refused, so neither statement runs.
func TestRefusedRedefinitionDoesNotRunTheOldStatement(t *testing.T) {
	s := loggedIn(t, MarkerGate{})
	ctx := context.Background()
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Name: "s1", Query: "SELECT email FROM customers"}, &pgproto3.Sync{}), false)
	s.FromServer(ctx, enc(t, &pgproto3.ParseComplete{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	s.FromClient(ctx, enc(t, &pgproto3.Parse{Name: "s1", Query: "DELETE FROM customers -- sluice:deny"}, &pgproto3.Sync{}), false)
	s.FromServer(ctx, enc(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42601", Message: `syntax error at or near "sluice_denied_n0nce"`},
		&pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
	r := s.FromClient(ctx, enc(t, &pgproto3.Bind{PreparedStatement: "s1"}, &pgproto3.Execute{}, &pgproto3.Sync{}), false)
	if bytes.Contains(r.Data, enc(t, &pgproto3.Execute{})) || !bytes.Contains(r.Data, []byte("sluice_denied_n0nce")) {
		t.Fatalf("server got %q: the Execute of the redefined name must be refused", r.Data)
	}
}

func TestTagRows(t *testing.T) {
	for tag, want := range map[string]int64{"SELECT 5\x00": 5, "INSERT 0 3\x00": 3, "COPY 10\x00": 10, "BEGIN\x00": 0,
		"SELECT x\x00": 0, "UPDATE \x00": 0, "12\x00": 0, "": 0} {
		if got := tagRows([]byte(tag)); got != want {
			t.Errorf("tagRows(%q) = %d, want %d", tag, got, want)
		}
	}
}
