package xds

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/policies"
)

var update = flag.Bool("update", false, "rewrite testdata/golden/*.json from the current translation")

// goldenConfigs are every example config (policies/examples/*.yaml, not
// broken/) and the configs in testdata/configs that exercise what the
// examples do not (TLS via committed test certificates, shared gRPC
// address, disabled targets, host names).
func goldenConfigs(t *testing.T) []string {
	t.Helper()
	examples, err := filepath.Glob("../policies/examples/*.yaml")
	if err != nil || len(examples) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	own, err := filepath.Glob("testdata/configs/*.yaml")
	if err != nil || len(own) == 0 {
		t.Fatalf("no testdata configs found: %v", err)
	}
	return append(examples, own...)
}

// TestGolden translates every config and compares a deterministic JSON
// rendering with testdata/golden/<name>.json. Run with -update to rewrite.
func TestGolden(t *testing.T) {
	seen := map[string]string{}
	for _, path := range goldenConfigs(t) {
		name := strings.TrimSuffix(filepath.Base(path), ".yaml")
		if other, dup := seen[name]; dup {
			t.Fatalf("%s and %s would share testdata/golden/%s.json: rename one", other, path, name)
		}
		seen[name] = path
		t.Run(name, func(t *testing.T) {
			cfg, err := policies.LoadFile(path)
			if err != nil {
				// An example that does not load is policies' test's
				// failure (TestExamplesLoad), not translation's.
				t.Skipf("%s does not load: %v", path, err)
			}
			res, err := Translate(cfg)
			if err != nil {
				t.Fatalf("Translate: %v", err)
			}
			if err := res.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if _, err := res.Snapshot("golden"); err != nil {
				t.Fatal(err)
			}
			got := render(t, res)
			file := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test ./xds/ -run TestGolden -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the translation of %s (run with -update after checking the change):\n%s", file, path, firstDiff(want, got))
			}
		})
	}
}

// render prints resources as JSON with sorted keys and two-space indent.
// protojson alone is not stable byte for byte (it varies its whitespace
// on purpose), so its output is decoded and re-encoded by encoding/json.
// Private keys are replaced by their SHA-256: test keys are public, but a
// golden file is no place for key material.
func render(t *testing.T, r *Resources) []byte {
	t.Helper()
	opts := protojson.MarshalOptions{UseProtoNames: true}
	doc := map[string][]json.RawMessage{}
	add := func(kind string, m proto.Message) {
		b, err := opts.Marshal(m)
		if err != nil {
			t.Fatalf("render %s: %v", kind, err)
		}
		doc[kind] = append(doc[kind], b)
	}
	for _, x := range r.Listeners {
		add("listeners", x)
	}
	for _, x := range r.Clusters {
		add("clusters", x)
	}
	for _, x := range r.Routes {
		add("routes", x)
	}
	for _, x := range r.Secrets {
		add("secrets", redactKey(x))
	}
	raw, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return append(out, '\n')
}

func redactKey(s *tlsv3.Secret) *tlsv3.Secret {
	key := s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()
	if key == nil {
		return s
	}
	c := proto.Clone(s).(*tlsv3.Secret)
	c.GetTlsCertificate().PrivateKey = &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
		InlineString: fmt.Sprintf("<private key, sha256 %x>", sha256.Sum256(key)),
	}}
	return c
}

// firstDiff shows the first differing line with a little context.
func firstDiff(want, got []byte) string {
	w, g := strings.Split(string(want), "\n"), strings.Split(string(got), "\n")
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			return fmt.Sprintf("line %d:\n  want: %s\n  got:  %s", i+1, wl, gl)
		}
	}
	return "(no line differs)"
}
