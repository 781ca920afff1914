package bootstrap_test

import (
	"bytes"
	"flag"
	"os"
	"testing"

	"github.com/sluicehq/sluice/xds/bootstrap"
)

var update = flag.Bool("update", false, "rewrite envoy/bootstrap.yaml from policies/examples/compose.yaml")

const (
	composeConfig    = "../../policies/examples/compose.yaml"
	composeBootstrap = "../../envoy/bootstrap.yaml"
)

// TestComposeBootstrapIsCurrent: the bootstrap docker-compose.yaml mounts is
// exactly what Render makes of the compose config, so the two never drift.
// After changing either, run: go test ./xds/bootstrap -run ComposeBootstrap -update
func TestComposeBootstrapIsCurrent(t *testing.T) {
	want, err := bootstrap.Render(load(t, composeConfig))
	if err != nil {
		t.Fatalf("Render(%s): %v", composeConfig, err)
	}
	if *update {
		if err := os.WriteFile(composeBootstrap, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(composeBootstrap)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is not Render(%s); run: go test ./xds/bootstrap -run ComposeBootstrap -update\n--- committed\n%s\n--- rendered\n%s",
			composeBootstrap, composeConfig, got, want)
	}
	bs := parse(t, got)
	if host, port := endpoint(t, xdsCluster(t, bs)); host != "sluice" || port != 18000 {
		t.Errorf("compose bootstrap dials sluice at %s:%d, want sluice:18000 (the compose service)", host, port)
	}
}
