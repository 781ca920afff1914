package xds

import (
	"strings"
	"testing"

	postgresv3alpha "github.com/envoyproxy/go-control-plane/contrib/envoy/extensions/filters/network/postgres_proxy/v3alpha"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	httpauthzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	httpextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// filterAny is the typed config of filter i of target's listener.
func filterAny(t *testing.T, r *Resources, target string, i int) *anypb.Any {
	t.Helper()
	return findListener(t, r, target).GetFilterChains()[0].GetFilters()[i].GetTypedConfig()
}

// hcmFilterAny is the typed config of HTTP filter i of an HTTP target.
func hcmFilterAny(t *testing.T, r *Resources, target string, i int, f func(*anypb.Any)) {
	t.Helper()
	repack(t, filterAny(t, r, target, 0), func(h *hcmv3.HttpConnectionManager) { f(h.GetHttpFilters()[i].GetTypedConfig()) })
}

// TestValidateCatches breaks one thing at a time in valid resources and
// expects Validate to name it. Most of these pass the resource's own
// ValidateAll, because PGV does not look inside Any.
func TestValidateCatches(t *testing.T) {
	for _, tc := range []struct {
		name    string
		breakIt func(*testing.T, *Resources)
		want    string
	}{
		{"network ext_proc without stat_prefix (inside Any)", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 2), func(m *netextprocv3.NetworkExternalProcessor) { m.StatPrefix = "" })
		}, "StatPrefix: value length must be at least 1"},
		{"network ext_proc both directions SKIP", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 2), func(m *netextprocv3.NetworkExternalProcessor) {
				m.ProcessingMode = &netextprocv3.ProcessingMode{ProcessRead: netextprocv3.ProcessingMode_SKIP, ProcessWrite: netextprocv3.ProcessingMode_SKIP}
			})
		}, "cannot both be SKIP"},
		{"network ext_proc without grpc_service", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 2), func(m *netextprocv3.NetworkExternalProcessor) { m.GrpcService = nil })
		}, "a grpc_service must be configured"},
		{"network ext_proc fail-open", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 2), func(m *netextprocv3.NetworkExternalProcessor) { m.FailureModeAllow = true })
		}, "failure_mode_allow must be false"},
		{"http ext_authz fail-open (nested Any in Any)", func(t *testing.T, r *Resources) {
			hcmFilterAny(t, r, "cluster-api", 0, func(a *anypb.Any) {
				repack(t, a, func(m *httpauthzv3.ExtAuthz) { m.FailureModeAllow = true })
			})
		}, "failure_mode_allow must be false"},
		{"http ext_proc full duplex without trailers", func(t *testing.T, r *Resources) {
			hcmFilterAny(t, r, "cluster-api", 1, func(a *anypb.Any) {
				repack(t, a, func(m *httpextprocv3.ExternalProcessor) {
					m.ProcessingMode.RequestBodyMode = httpextprocv3.ProcessingMode_FULL_DUPLEX_STREAMED
				})
			})
		}, "FULL_DUPLEX_STREAMED"},
		{"router not last", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "cluster-api", 0), func(h *hcmv3.HttpConnectionManager) {
				f := h.HttpFilters
				f[1], f[2] = f[2], f[1]
			})
		}, "last HTTP filter must be envoy.filters.http.router"},
		{"tcp_proxy delayed connect without early data", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 3), func(m *tcpproxyv3.TcpProxy) {
				m.UpstreamConnectMode = tcpproxyv3.UpstreamConnectMode_ON_DOWNSTREAM_DATA
			})
		}, "needs max_early_data_bytes"},
		{"postgres TLS without starttls", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 0), func(m *postgresv3alpha.PostgresProxy) {
				m.DownstreamSsl = postgresv3alpha.PostgresProxy_REQUIRE
			})
		}, "needs transport socket envoy.transport_sockets.starttls"},
		{"tcp_proxy to a missing cluster", func(t *testing.T, r *Resources) {
			repack(t, filterAny(t, r, "orders-db", 3), func(m *tcpproxyv3.TcpProxy) {
				m.ClusterSpecifier = &tcpproxyv3.TcpProxy_Cluster{Cluster: "nowhere"}
			})
		}, `references cluster "nowhere", which does not exist`},
		{"route to a missing cluster", func(t *testing.T, r *Resources) {
			findRoute(t, r, "cluster-api").VirtualHosts[0].Routes[0].GetRoute().ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "nowhere"}
		}, `references cluster "nowhere", which does not exist`},
		{"route configuration missing", func(t *testing.T, r *Resources) {
			r.Routes = nil
		}, `references route "cluster-api", which does not exist`},
		{"sluice_authz cluster missing", func(t *testing.T, r *Resources) {
			r.Clusters = deleteCluster(r.Clusters, AuthzCluster)
		}, `references cluster "sluice_authz", which does not exist`},
		{"unknown typed config", func(t *testing.T, r *Resources) {
			findListener(t, r, "orders-db").FilterChains[0].Filters[1].GetTypedConfig().TypeUrl = "type.googleapis.com/sluice.Unknown"
		}, "sluice.Unknown"},
		{"duplicate cluster", func(t *testing.T, r *Resources) {
			r.Clusters = append(r.Clusters, proto.Clone(r.Clusters[0]).(*clusterv3.Cluster))
		}, "is defined twice"},
		{"cluster PGV rule", func(t *testing.T, r *Resources) {
			r.Clusters[0].Name = ""
		}, "Name: value length must be at least 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, res := load(t, demoConfig)
			if err := res.Validate(); err != nil {
				t.Fatalf("valid resources refused: %v", err)
			}
			tc.breakIt(t, res)
			err := res.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func deleteCluster(cs []*clusterv3.Cluster, name string) []*clusterv3.Cluster {
	var out []*clusterv3.Cluster
	for _, c := range cs {
		if c.GetName() != name {
			out = append(out, c)
		}
	}
	return out
}

// TestSecretReferencesChecked: an SDS name without its secret is refused.
func TestSecretReferencesChecked(t *testing.T) {
	_, res := load(t, tlsConfig)
	res.Secrets = res.Secrets[1:]
	if err := res.Validate(); err == nil || !strings.Contains(err.Error(), "references secret") {
		t.Fatalf("Validate = %v", err)
	}
}

// TestUpdateRefusesInvalid: a resource that fails validation is refused by
// Update, and the published snapshot stays exactly as it was.
func TestUpdateRefusesInvalid(t *testing.T) {
	logs := &testenv.SyncBuffer{}
	s, err := NewServer(Options{Logger: newTestLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := policies.LoadFile(demoConfig)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(cfg); err != nil {
		t.Fatalf("first Update: %v", err)
	}
	v1 := s.Version()
	if !strings.HasPrefix(v1, "1-") || len(v1) != len("1-")+12 {
		t.Fatalf("version = %q, want 1-<12 hex>", v1)
	}

	s.mutate = func(r *Resources) {
		for _, l := range r.Listeners {
			for _, f := range l.FilterChains[0].Filters {
				if f.GetName() == filterNetExtProc {
					repack(t, f.GetTypedConfig(), func(m *netextprocv3.NetworkExternalProcessor) { m.StatPrefix = "" })
				}
			}
		}
	}
	changed, _ := policies.LoadFile(demoConfig)
	changed.Targets[0].Port = 25432 // a real change, so only validation stops it
	err = s.Update(changed)
	if err == nil || !strings.Contains(err.Error(), "StatPrefix") {
		t.Fatalf("Update with a broken resource = %v, want a validation error", err)
	}
	if s.Version() != v1 {
		t.Errorf("version moved to %q after a refused update", s.Version())
	}
	snap, err := s.cache.GetSnapshot("edge")
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.GetVersion(resource.ListenerType); got != v1 {
		t.Errorf("cached snapshot version = %q, want %q", got, v1)
	}
	l, ok := snap.GetResources(resource.ListenerType)["orders-db"].(*listenerv3.Listener)
	if !ok || l.GetAddress().GetSocketAddress().GetPortValue() != 15432 {
		t.Errorf("served orders-db listener = %v, want the old one on 15432", l)
	}
	if st := s.Stats(); st.Refused != 1 || st.Published != 1 {
		t.Errorf("stats = %+v, want 1 published, 1 refused", st)
	}
	if !strings.Contains(logs.String(), "xDS update refused") {
		t.Errorf("refusal not logged:\n%s", logs)
	}

	// The same change without the breakage is published as version 2.
	s.mutate = nil
	if err := s.Update(changed); err != nil {
		t.Fatal(err)
	}
	if v := s.Version(); !strings.HasPrefix(v, "2-") {
		t.Errorf("version after a good update = %q", v)
	}
}

// TestUpdateUnchanged: a config with identical resources keeps the
// version and publishes nothing.
func TestUpdateUnchanged(t *testing.T) {
	s, err := NewServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := policies.LoadFile(demoConfig)
	if err := s.Update(cfg); err != nil {
		t.Fatal(err)
	}
	v := s.Version()
	again, _ := policies.LoadFile(demoConfig)
	again.Policies[0].MaxRows = 1 // policy only: no Envoy resource changes
	if err := s.Update(again); err != nil {
		t.Fatal(err)
	}
	if s.Version() != v || s.Stats().Published != 1 {
		t.Errorf("version %q → %q, published %d", v, s.Version(), s.Stats().Published)
	}
	if err := s.Update(nil); err == nil {
		t.Error("Update(nil) succeeded")
	}
}

// TestSnapshotConsistency: a route configuration no listener references
// passes Validate but not Consistent, and Update refuses it.
func TestSnapshotConsistency(t *testing.T) {
	_, res := load(t, demoConfig)
	extra := proto.Clone(res.Routes[0]).(*routev3.RouteConfiguration)
	extra.Name = "orphan"
	res.Routes = append(res.Routes, extra)
	if _, err := res.Snapshot("v"); err == nil || !strings.Contains(err.Error(), "inconsistent") {
		t.Fatalf("Snapshot = %v, want inconsistent", err)
	}

	s, _ := NewServer(Options{})
	s.mutate = func(r *Resources) { r.Routes = append(r.Routes, extra) }
	cfg, _ := policies.LoadFile(demoConfig)
	if err := s.Update(cfg); err == nil {
		t.Fatal("Update published an inconsistent snapshot")
	}
	if s.Version() != "" {
		t.Errorf("version = %q", s.Version())
	}
	if _, err := s.cache.GetSnapshot("edge"); err == nil {
		t.Error("a snapshot was set")
	}
}
