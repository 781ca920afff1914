package extproc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// TestConnectTargetTLS: sluice's own connection to a target Envoy speaks
// TLS to uses the same TLS: it logs in with the client certificate where
// pg_hba.conf says cert, verifies the server against upstream_ca_file
// (chain and name) or, without one, does not; and fails with a wrong CA, a
// wrong name, or no certificate.
func TestConnectTargetTLS(t *testing.T) {
	pg := testenv.StartPostgres(t, testenv.WithTLS())
	pg.CreateDatabase("cat")
	cert, key := pg.SetCertAuth(t, "cat_cert")
	other := testenv.NewPKI(t, "another CA", "")
	addr := fmt.Sprintf("127.0.0.1:%d", pg.Port)
	target := func(mod func(*policies.Target)) *policies.Target {
		tg := &policies.Target{Name: "cat-db", Kind: policies.KindPostgres, Upstream: addr, Database: "cat",
			Credentials:    policies.Credentials{User: "cat_cert", ClientCertFile: cert, ClientKeyFile: key},
			UpstreamCAFile: pg.PKI.CAFile}
		if mod != nil {
			mod(tg)
		}
		return tg
	}
	for _, tc := range []struct {
		name string
		mod  func(*policies.Target)
		err  string // "" when the login must succeed
	}{
		{"certificate, CA, address", nil, ""},
		{"certificate, CA, SNI localhost", func(tg *policies.Target) { tg.UpstreamSNI = "localhost" }, ""},
		{"certificate, no CA", func(tg *policies.Target) { tg.UpstreamCAFile = "" }, ""},
		{"server from another CA", func(tg *policies.Target) { tg.UpstreamCAFile = other.CAFile }, "certificate signed by unknown authority"},
		{"server named otherwise", func(tg *policies.Target) { tg.UpstreamSNI = "db.example.com" }, "not db.example.com"},
		{"no client certificate", func(tg *policies.Target) { tg.Credentials.ClientCertFile, tg.Credentials.ClientKeyFile = "", "" },
			"connection requires a valid client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := connectTarget(ctx, target(tc.mod))
			if tc.err != "" {
				if err == nil {
					conn.Close(ctx)
					t.Fatal("connected")
				}
				if !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one saying %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(ctx)
			var user string
			var ssl bool
			if err := conn.QueryRow(ctx, "SELECT current_user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").Scan(&user, &ssl); err != nil {
				t.Fatal(err)
			}
			if user != "cat_cert" || !ssl {
				t.Errorf("logged in as %s, ssl %v", user, ssl)
			}
		})
	}
}
