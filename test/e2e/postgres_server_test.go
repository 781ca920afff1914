package e2e

import (
	"fmt"
	"io"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/sluicehq/sluice/test/testenv"
)

// TestPostgresServerAnswersSluiceReliesOn asks a real Postgres, with no
// sluice in between, the questions sluice's slot techniques depend on
// (filters/postgres doc.go), so that a server version that answers
// differently fails here first:
//
//   - an SSLRequest on a server without TLS is answered 'N' (the write slot
//     that answers the agent's own SSLRequest or GSSENCRequest);
//   - trust: a Sync sent right behind the StartupMessage, before the
//     server has said anything, is answered by a second ReadyForQuery after
//     the server's own (the write slot that releases the held startup);
//   - password and md5: an empty password is a FATAL 28P01 ("empty password
//     returned by client"), not a failed login as the target's role;
//   - scram: an unoffered mechanism is a FATAL; so is a malformed
//     client-final message.
func TestPostgresServerAnswersSluiceReliesOn(t *testing.T) {
	pg := testenv.StartPostgres(t)
	dial := func() (*pgproto3.Frontend, func()) {
		nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port)))
		if err != nil {
			t.Fatal(err)
		}
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		return pgproto3.NewFrontend(nc, nc), func() { nc.Close() }
	}
	startup := &pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "app", "database": "postgres"}}
	// rest reads until the server closes and names what it said.
	rest := func(fe *pgproto3.Frontend) string {
		var out string
		for {
			m, err := fe.Receive()
			if err != nil {
				return out + "EOF"
			}
			switch m := m.(type) {
			case *pgproto3.ErrorResponse:
				out += fmt.Sprintf("%s %s %s; ", m.Severity, m.Code, m.Message)
			case *pgproto3.ReadyForQuery:
				out += "Z; "
			case *pgproto3.AuthenticationOk:
				out += "R0; "
			}
		}
	}

	t.Run("SSLRequest", func(t *testing.T) {
		nc, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(pg.Port)))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(10 * time.Second))
		req, _ := (&pgproto3.SSLRequest{}).Encode(nil)
		nc.Write(req)
		b := make([]byte, 1)
		if _, err := io.ReadFull(nc, b); err != nil || b[0] != 'N' {
			t.Fatalf("SSLRequest answered %q, %v", b, err)
		}
	})
	for _, tc := range []struct {
		method string
		reply  []pgproto3.FrontendMessage
		want   string
	}{
		{testenv.AuthTrust, []pgproto3.FrontendMessage{&pgproto3.Sync{}, &pgproto3.Terminate{}}, "R0; Z; Z; EOF"},
		{testenv.AuthPassword, []pgproto3.FrontendMessage{&pgproto3.PasswordMessage{}}, "FATAL 28P01 empty password returned by client; EOF"},
		{testenv.AuthMD5, []pgproto3.FrontendMessage{&pgproto3.PasswordMessage{}}, "FATAL 28P01 empty password returned by client; EOF"},
		{testenv.AuthSCRAM, []pgproto3.FrontendMessage{&pgproto3.SASLInitialResponse{AuthMechanism: "sluice-refused"}}, "FATAL 08P01 client selected an invalid SASL authentication mechanism; EOF"},
	} {
		t.Run(tc.method, func(t *testing.T) {
			pg.SetAuth(t, "app", "pw", tc.method)
			fe, done := dial()
			defer done()
			fe.Send(startup)
			if tc.method == testenv.AuthTrust {
				// Before the server has answered anything.
				for _, m := range tc.reply {
					fe.Send(m)
				}
				fe.Flush()
			} else {
				fe.Flush()
				if _, err := fe.Receive(); err != nil {
					t.Fatal(err)
				}
				for _, m := range tc.reply {
					fe.Send(m)
				}
				fe.Flush()
			}
			if got := rest(fe); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
	t.Run("scram malformed client-final", func(t *testing.T) {
		pg.SetAuth(t, "app", "pw", testenv.AuthSCRAM)
		fe, done := dial()
		defer done()
		fe.Send(startup)
		fe.Flush()
		fe.Receive()
		fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abcdefghijkl")})
		fe.Flush()
		if m, err := fe.Receive(); err != nil {
			t.Fatalf("%T %v", m, err)
		}
		fe.Send(&pgproto3.SASLResponse{Data: []byte("sluice-refused")})
		fe.Flush()
		if got := rest(fe); got != "FATAL 08P01 malformed SCRAM message; EOF" {
			t.Errorf("got %q", got)
		}
	})
}
