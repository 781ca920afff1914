package postgres

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/policies"
)

// The conversations in testdata/conversations are wire exchanges, one
// line per message, in the manner of cockroach's pgwire testdata:
//
//	client <Type> <json>     a message in the client's next chunk
//	server <Type> <json>     a message in the server's next chunk
//	client|server raw <hex>  bytes as they are
//	client|server eos        the chunk ends the stream (alone: an empty chunk)
//	server-gets <Type> <json>  a message sluice sends the server in reply
//	client-gets <Type> <json>  a message sluice sends the client in reply
//	server-gets|client-gets eos      the reply ends the stream
//	server-gets|client-gets nothing  the reply carries no bytes
//	closed                    the reply closes the connection
//	config upstream_tls|client_cert  the session's Upstream.TLS, ClientCert
//
// Consecutive input lines of one direction are one chunk; the expectation
// lines after it describe the one reply to it, which must carry exactly
// those messages. Each conversation also runs with every chunk delivered a
// byte at a time, and the replies to one chunk's bytes, concatenated, must
// be the same.

// testAuth is the Authenticator of the conversations.
type testAuth struct{}

func (testAuth) Authenticate(_ context.Context, l Login) (Identity, error) {
	switch l.Token {
	case "good-token":
		return Identity{Principal: policies.Principal{Subject: "agent-1", Groups: []string{"agents"}}}, nil
	case "expired-token":
		return Identity{}, &AuthError{SQLState: SQLStateInvalidPassword, Reason: "sluice: token_expired: token expired at 2026-01-01T00:00:00Z"}
	case "nobody-token":
		return Identity{}, &AuthError{SQLState: SQLStateInvalidAuthorization, Reason: "sluice: agent-2 may not use target orders-db"}
	}
	return Identity{}, &AuthError{SQLState: SQLStateInvalidPassword, Reason: "sluice: token_malformed: token is not a JWT"}
}

func testConfig() Config {
	keys := NewKeyRegistry()
	keys.Add("orders-db", BackendKey{ProcessID: 42, Secret: "\x00\x00\x00\x07"})
	return Config{
		Target:     "orders-db",
		Upstream:   Upstream{User: "app", Database: "orders", Password: func() (string, error) { return "secret", nil }},
		Auth:       testAuth{},
		Gate:       MarkerGate{Marker: "sluice:deny"},
		Cancels:    keys,
		Nonce:      func() string { return "n0nce" },
		scramNonce: func() string { return "clientnonce" },
	}
}

var frontendTypes = map[string]func() pgproto3.Message{
	"StartupMessage":      func() pgproto3.Message { return &pgproto3.StartupMessage{} },
	"SSLRequest":          func() pgproto3.Message { return &pgproto3.SSLRequest{} },
	"GSSEncRequest":       func() pgproto3.Message { return &pgproto3.GSSEncRequest{} },
	"CancelRequest":       func() pgproto3.Message { return &pgproto3.CancelRequest{} },
	"PasswordMessage":     func() pgproto3.Message { return &pgproto3.PasswordMessage{} },
	"SASLInitialResponse": func() pgproto3.Message { return &pgproto3.SASLInitialResponse{} },
	"SASLResponse":        func() pgproto3.Message { return &pgproto3.SASLResponse{} },
	"Query":               func() pgproto3.Message { return &pgproto3.Query{} },
	"Parse":               func() pgproto3.Message { return &pgproto3.Parse{} },
	"Bind":                func() pgproto3.Message { return &pgproto3.Bind{} },
	"Describe":            func() pgproto3.Message { return &pgproto3.Describe{} },
	"Execute":             func() pgproto3.Message { return &pgproto3.Execute{} },
	"Sync":                func() pgproto3.Message { return &pgproto3.Sync{} },
	"Terminate":           func() pgproto3.Message { return &pgproto3.Terminate{} },
	"FunctionCall":        func() pgproto3.Message { return &pgproto3.FunctionCall{} },
}

var backendTypes = map[string]func() pgproto3.Message{
	"AuthenticationOk":                func() pgproto3.Message { return &pgproto3.AuthenticationOk{} },
	"AuthenticationCleartextPassword": func() pgproto3.Message { return &pgproto3.AuthenticationCleartextPassword{} },
	"AuthenticationMD5Password":       func() pgproto3.Message { return &pgproto3.AuthenticationMD5Password{} },
	"AuthenticationSASL":              func() pgproto3.Message { return &pgproto3.AuthenticationSASL{} },
	"AuthenticationSASLContinue":      func() pgproto3.Message { return &pgproto3.AuthenticationSASLContinue{} },
	"AuthenticationSASLFinal":         func() pgproto3.Message { return &pgproto3.AuthenticationSASLFinal{} },
	"AuthenticationGSS":               func() pgproto3.Message { return &pgproto3.AuthenticationGSS{} },
	"ParameterStatus":                 func() pgproto3.Message { return &pgproto3.ParameterStatus{} },
	"BackendKeyData":                  func() pgproto3.Message { return &pgproto3.BackendKeyData{} },
	"ReadyForQuery":                   func() pgproto3.Message { return &pgproto3.ReadyForQuery{} },
	"ErrorResponse":                   func() pgproto3.Message { return &pgproto3.ErrorResponse{} },
	"NoticeResponse":                  func() pgproto3.Message { return &pgproto3.NoticeResponse{} },
	"RowDescription":                  func() pgproto3.Message { return &pgproto3.RowDescription{} },
	"DataRow":                         func() pgproto3.Message { return &pgproto3.DataRow{} },
	"CommandComplete":                 func() pgproto3.Message { return &pgproto3.CommandComplete{} },
	"ParseComplete":                   func() pgproto3.Message { return &pgproto3.ParseComplete{} },
	"BindComplete":                    func() pgproto3.Message { return &pgproto3.BindComplete{} },
	"EmptyQueryResponse":              func() pgproto3.Message { return &pgproto3.EmptyQueryResponse{} },
}

// untyped are the messages without a type byte.
var untyped = map[string]bool{"StartupMessage": true, "SSLRequest": true, "GSSEncRequest": true, "CancelRequest": true}

// wireMsg is one message line: its type name and its bytes.
type wireMsg struct {
	name string
	raw  []byte
}

func parseMsg(t testing.TB, where, dir, rest string) wireMsg {
	t.Helper()
	name, js, _ := strings.Cut(rest, " ")
	switch name {
	case "raw":
		b, err := hex.DecodeString(strings.ReplaceAll(js, " ", ""))
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		return wireMsg{name: "raw", raw: b}
	case "byte":
		return wireMsg{name: "byte", raw: []byte(js)}
	}
	types := frontendTypes
	if dir == "server" {
		types = backendTypes
	}
	mk, ok := types[name]
	if !ok {
		t.Fatalf("%s: unknown %s message type %q", where, dir, name)
	}
	m := mk()
	if js != "" && (name == "SASLInitialResponse" || name == "SASLResponse") {
		js = hexData(t, where, js)
	}
	if js != "" {
		if err := json.Unmarshal([]byte(js), m); err != nil {
			t.Fatalf("%s: %s: %v", where, name, err)
		}
	}
	raw, err := m.Encode(nil)
	if err != nil {
		t.Fatalf("%s: encode %s: %v", where, name, err)
	}
	return wireMsg{name: name, raw: raw}
}

// step is one chunk and the reply expected to it.
type step struct {
	where     string
	dir       string // client or server
	chunk     []byte
	eos       bool
	want      []wireMsg
	wantEOS   bool
	wantClose bool
	answered  bool
}

func loadConversation(t testing.TB, path string) []step {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var steps []step
	var cur *step
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		where := fmt.Sprintf("%s:%d", filepath.Base(path), n)
		dir, rest, _ := strings.Cut(line, " ")
		switch dir {
		case "config":
			// Read by conversationConfig.
		case "client", "server":
			if cur == nil || cur.dir != dir || cur.answered {
				steps = append(steps, step{where: where, dir: dir})
				cur = &steps[len(steps)-1]
			}
			if rest == "eos" {
				cur.eos = true
				continue
			}
			cur.chunk = append(cur.chunk, parseMsg(t, where, dir, rest).raw...)
		case "server-gets", "client-gets", "closed":
			if cur == nil {
				t.Fatalf("%s: expectation before any chunk", where)
			}
			if want := map[string]string{"client": "server-gets", "server": "client-gets"}[cur.dir]; dir != "closed" && dir != want {
				t.Fatalf("%s: a %s chunk is answered with %s, not %s", where, cur.dir, want, dir)
			}
			switch {
			case dir == "closed":
				cur.wantClose = true
			case rest == "eos":
				cur.wantEOS = true
			case rest == "nothing":
			default:
				src := "client"
				if dir == "client-gets" {
					src = "server"
				}
				cur.want = append(cur.want, parseMsg(t, where, src, rest))
			}
			// The next input line starts a new chunk.
			cur.answered = true
		default:
			t.Fatalf("%s: unknown line %q", where, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return steps
}

// describe decodes a reply into message names for failure messages.
func describe(b []byte, startup bool) string {
	var parts []string
	for len(b) > 0 {
		if startup {
			if len(b) < 8 {
				parts = append(parts, fmt.Sprintf("partial %x", b))
				break
			}
			n := int(binary.BigEndian.Uint32(b))
			if n > len(b) || n < 8 {
				parts = append(parts, fmt.Sprintf("bad %x", b))
				break
			}
			parts = append(parts, fmt.Sprintf("startup(%d)%q", binary.BigEndian.Uint32(b[4:]), b[8:n]))
			b = b[n:]
			startup = false
			continue
		}
		if len(b) < 5 {
			parts = append(parts, fmt.Sprintf("bytes %q", b))
			break
		}
		n := int(binary.BigEndian.Uint32(b[1:])) + 1
		if n > len(b) || n < 5 {
			parts = append(parts, fmt.Sprintf("bad %q", b))
			break
		}
		parts = append(parts, fmt.Sprintf("%c%q", b[0], b[5:n]))
		b = b[n:]
	}
	return strings.Join(parts, " ")
}

// conversationConfig is testConfig with a conversation's config lines
// applied.
func conversationConfig(t testing.TB, path string) Config {
	t.Helper()
	cfg := testConfig()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		opts, ok := strings.CutPrefix(strings.TrimSpace(line), "config ")
		if !ok {
			continue
		}
		for _, o := range strings.Fields(opts) {
			switch o {
			case "upstream_tls":
				cfg.Upstream.TLS = true
			case "client_cert":
				cfg.Upstream.ClientCert = true
			default:
				t.Fatalf("%s: unknown config %q", path, o)
			}
		}
	}
	return cfg
}

func runConversation(t *testing.T, cfg Config, steps []step, bytewise bool) {
	t.Helper()
	s := New(cfg)
	ctx := context.Background()
	for _, st := range steps {
		var got Reply
		feed := func(b []byte, eos bool) Reply {
			if st.dir == "client" {
				return s.FromClient(ctx, b, eos)
			}
			return s.FromServer(ctx, b, eos)
		}
		if bytewise && len(st.chunk) > 1 {
			got.Data = []byte{}
			for i := range st.chunk {
				r := feed(st.chunk[i:i+1], st.eos && i == len(st.chunk)-1)
				if r.Data == nil {
					t.Fatalf("%s: a reply without data", st.where)
				}
				got.Data = append(got.Data, r.Data...)
				got.EndOfStream = got.EndOfStream || r.EndOfStream
				got.Close = got.Close || r.Close
				if r.Close {
					break
				}
			}
		} else {
			got = feed(st.chunk, st.eos)
		}
		if got.Data == nil {
			t.Fatalf("%s: a reply without data", st.where)
		}
		if got.Close != st.wantClose {
			t.Fatalf("%s: close = %v, want %v (reason %q)", st.where, got.Close, st.wantClose, got.Reason)
		}
		if got.Close {
			continue
		}
		if got.EndOfStream != st.wantEOS {
			t.Fatalf("%s: end_of_stream = %v, want %v", st.where, got.EndOfStream, st.wantEOS)
		}
		var want []byte
		for _, m := range st.want {
			want = append(want, m.raw...)
		}
		if !bytes.Equal(got.Data, want) && !sameMessages(got.Data, st.want) {
			startup := len(st.want) > 0 && untyped[st.want[0].name]
			t.Fatalf("%s: reply\n got: %s\nwant: %s", st.where, describe(got.Data, startup), describe(want, startup))
		}
	}
}

// sameMessages compares a reply holding one StartupMessage by meaning: its
// parameters are a map, so their order on the wire is not fixed.
func sameMessages(got []byte, want []wireMsg) bool {
	if len(want) != 1 || want[0].name != "StartupMessage" || len(got) < 8 {
		return false
	}
	var a, b pgproto3.StartupMessage
	if a.Decode(got[4:]) != nil || b.Decode(want[0].raw[4:]) != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb) && int(binary.BigEndian.Uint32(got)) == len(got)
}

func TestConversations(t *testing.T) {
	files, _ := filepath.Glob("testdata/conversations/*.txt")
	if len(files) == 0 {
		t.Fatal("no conversations")
	}
	for _, path := range files {
		steps, cfg := loadConversation(t, path), conversationConfig(t, path)
		name := strings.TrimSuffix(filepath.Base(path), ".txt")
		t.Run(name, func(t *testing.T) { runConversation(t, cfg, steps, false) })
		t.Run(name+"/bytewise", func(t *testing.T) { runConversation(t, cfg, steps, true) })
	}
}

// hexData lets the testdata write SASL payloads as text: pgproto3 reads
// those two messages' Data as hex.
func hexData(t testing.TB, where, js string) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(js), &m); err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	if d, ok := m["Data"].(string); ok {
		m["Data"] = hex.EncodeToString([]byte(d))
	}
	out, _ := json.Marshal(m)
	return string(out)
}
