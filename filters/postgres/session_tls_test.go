package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// recordingAuth accepts every token and keeps the Login it was given.
type recordingAuth struct{ login Login }

func (a *recordingAuth) Authenticate(_ context.Context, l Login) (Identity, error) {
	a.login = l
	return Identity{}, nil
}

// TestUpstreamTLSLoginMode: a server that accepts the login at once is
// recorded as "cert" when Envoy presented a client certificate over TLS,
// and as "trust" otherwise (no certificate, or no TLS to the target).
func TestUpstreamTLSLoginMode(t *testing.T) {
	for _, tc := range []struct {
		name            string
		tls, clientCert bool
		want            string
	}{
		{"certificate over TLS", true, true, "cert"},
		{"TLS without a certificate", true, false, "trust"},
		{"clear text", false, false, "trust"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth := &recordingAuth{}
			cfg := testConfig()
			cfg.Auth, cfg.Upstream.TLS, cfg.Upstream.ClientCert = auth, tc.tls, tc.clientCert
			s := New(cfg)
			ctx := context.Background()
			enc := func(msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
				var b []byte
				for _, m := range msgs {
					var err error
					if b, err = m.Encode(b); err != nil {
						t.Fatal(err)
					}
				}
				return b
			}
			if tc.tls {
				if r := s.FromClient(ctx, enc(&pgproto3.SSLRequest{}), false); string(r.Data) != string(enc(&pgproto3.SSLRequest{})) {
					t.Fatalf("SSLRequest answered %q", r.Data)
				}
				// The answer is the one byte postgres_proxy reads: a framed
				// message, or anything more, would put it out of sync.
				if r := s.FromServer(ctx, []byte{'S'}, false); string(r.Data) != "S" || r.EndOfStream {
					t.Fatalf("'S' answered %q, eos %v", r.Data, r.EndOfStream)
				}
			}
			s.FromClient(ctx, enc(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersion30, Parameters: map[string]string{"user": "a"}}), false)
			s.FromServer(ctx, enc(&pgproto3.AuthenticationOk{}, &pgproto3.ReadyForQuery{TxStatus: 'I'}), false)
			s.FromClient(ctx, enc(&pgproto3.PasswordMessage{Password: "good-token"}), false)
			if auth.login.Mode != tc.want {
				t.Errorf("mode %q, want %q", auth.login.Mode, tc.want)
			}
			if r := s.FromServer(ctx, enc(&pgproto3.ReadyForQuery{TxStatus: 'I'}), false); !s.Ready() || len(r.Data) == 0 {
				t.Errorf("not ready after the Sync's answer: %s, %q", s.Phase(), r.Data)
			}
		})
	}
}
