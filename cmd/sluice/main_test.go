package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/sluicehq/sluice/audit"
	"github.com/sluicehq/sluice/filters/sql"
	"github.com/sluicehq/sluice/test/testenv"
)

func TestCommandLineErrors(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{nil, "no command given"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"serve"}, "--config is required"},
		{[]string{"envoy"}, "envoy bootstrap"},
		{[]string{"envoy", "bootstrap", "--config", "../../policies/examples/broken/bad-port.yaml"}, "bad-port.yaml:7:11: targets[0].port: expected a port from 1 to 65535, got 70000"},
		{[]string{"serve", "--config", "does-not-exist.yaml"}, "no such file"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := run(context.Background(), c.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("sluice %v: err = %v, want it to contain %q", c.args, err, c.want)
		}
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "sluice ") || len(strings.TrimSpace(out.String())) <= len("sluice ") {
		t.Errorf("version output %q", out.String())
	}
}

func TestEnvoyBootstrapPrintsYAML(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"envoy", "bootstrap", "--config", "../../policies/examples/demo.yaml"}, &out, io.Discard); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"sluice_xds", "edge", "18000"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bootstrap lacks %q:\n%s", want, out.String())
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// TestServeServesADSAndAPI runs "sluice serve" in-process on free loopback
// ports and checks what an operator and Envoy would first touch: /readyz,
// /metrics, and an ADS subscription that returns the demo's listeners.
func TestServeServesADSAndAPI(t *testing.T) {
	demo, err := os.ReadFile("../../policies/examples/demo.yaml")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr, authzAddr, extprocAddr, apiAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	cfg := string(demo)
	for old, nw := range map[string]string{
		"127.0.0.1:18000": xdsAddr, "127.0.0.1:9001": authzAddr,
		"127.0.0.1:9002": extprocAddr, "127.0.0.1:8080": apiAddr,
	} {
		cfg = strings.Replace(cfg, old, nw, 1)
	}
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs testenv.SyncBuffer
	go func() { done <- run(ctx, []string{"serve", "--config", path}, io.Discard, &logs) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve returned %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not stop")
		}
	}()

	api := "http://" + apiAddr
	var ready map[string]any
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(api + "/readyz")
		if err == nil {
			json.NewDecoder(resp.Body).Decode(&ready)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready: %v %v", err, ready)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if v, _ := ready["xds_version"].(string); v == "" {
		t.Errorf("readyz has no xds_version: %v", ready)
	}

	cc, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
	defer scancel()
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoverypb.DiscoveryRequest{Node: &corepb.Node{Id: "edge"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 2 {
		t.Errorf("got %d listeners, want 2 (orders-db, cluster-api)", len(resp.Resources))
	}

	mresp, err := http.Get(api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	if !strings.Contains(string(body), "sluice_xds_streams_total") || !strings.Contains(string(body), "sluice_xds_snapshots_published_total") {
		t.Errorf("/metrics does not show the ADS stream:\n%.2000s", body)
	}
	// The grants API is mounted: its document is public, its routes need a token.
	if r, err := http.Get(api + "/v1/openapi.yaml"); err != nil || r.StatusCode != 200 {
		t.Errorf("GET /v1/openapi.yaml: %v %v", r, err)
	} else {
		r.Body.Close()
	}
	if r, err := http.Post(api+"/v1/grants", "application/json", strings.NewReader(`{}`)); err != nil || r.StatusCode != 401 {
		t.Errorf("POST /v1/grants without a token: %v %v, want 401", r, err)
	} else {
		r.Body.Close()
	}
	if r, err := http.Get(api + "/v1/audit?target=orders-db"); err != nil || r.StatusCode != 401 {
		t.Errorf("GET /v1/audit without a token: %v %v, want 401", r, err)
	} else {
		r.Body.Close()
	}
	nf, err := http.Get(api + "/v1/nothing")
	if err != nil {
		t.Fatal(err)
	}
	nf.Body.Close()
	if nf.StatusCode != 404 {
		t.Errorf("unknown path: status %d, want 404", nf.StatusCode)
	}

	// The config applied at start, and each reload, is in the audit trail
	// with the digest of the bytes applied.
	reloaded := cfg + "\n# edited\n"
	if err := os.WriteFile(path, []byte(reloaded), 0o644); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "config reloaded"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the edited config was not reloaded:\n%s", logs.String())
		}
	}
	trail, err := audit.Open(ctx, "sqlite://"+filepath.Join(filepath.Dir(path), "sluice-audit.db"), audit.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	defer trail.Close()
	page, err := trail.Query(ctx, audit.Filter{Kind: audit.KindConfigReload})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range page.Records { // newest first
		got = append(got, r.Reason+" "+r.Digest)
	}
	want := []string{
		fmt.Sprintf("reloaded sha256:%x", sha256.Sum256([]byte(reloaded))),
		fmt.Sprintf("loaded at start sha256:%x", sha256.Sum256([]byte(cfg))),
	}
	if !slices.Equal(got, want) {
		t.Errorf("config.reload records:\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestFingerprint: what a statement grant requested through the API is
// scoped to is what the gate computes for the statement when it runs.
func TestFingerprint(t *testing.T) {
	a := sql.New()
	f1, err1 := fingerprint(a, "UPDATE items SET name = 'a' WHERE id = 1")
	f2, err2 := fingerprint(a, "update items set name = 'b' where id = 2")
	if err1 != nil || err2 != nil || f1 == "" || f1 != f2 {
		t.Errorf("same shape: %q %v, %q %v", f1, err1, f2, err2)
	}
	if f3, _ := fingerprint(a, "DELETE FROM items WHERE id = 1"); f3 == f1 {
		t.Error("another statement has the same fingerprint")
	}
	for _, bad := range []string{"SELECT 1; SELECT 2", "UPDATE items SET", ""} {
		if _, err := fingerprint(a, bad); err == nil {
			t.Errorf("fingerprint(%q) succeeded", bad)
		}
	}
}
