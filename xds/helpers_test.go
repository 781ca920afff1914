package xds

import (
	"log/slog"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// load loads a config and translates it; any failure ends the test.
func load(t testing.TB, path string) (*policies.Config, *Resources) {
	t.Helper()
	cfg, err := policies.LoadFile(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	res, err := Translate(cfg)
	if err != nil {
		t.Fatalf("Translate %s: %v", path, err)
	}
	return cfg, res
}

// unpack unpacks a typed config of the expected type.
func unpack[T proto.Message](t testing.TB, a *anypb.Any) T {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
	}
	x, ok := m.(T)
	if !ok {
		var zero T
		t.Fatalf("typed config is %s, want %T", a.GetTypeUrl(), zero)
	}
	return x
}

// repack replaces the message inside a after f changed it.
func repack[T proto.Message](t testing.TB, a *anypb.Any, f func(T)) {
	t.Helper()
	m := unpack[T](t, a)
	f(m)
	if err := a.MarshalFrom(m); err != nil {
		t.Fatal(err)
	}
}

// collect returns every message of type T anywhere in r, Anys unpacked.
func collect[T proto.Message](t testing.TB, r *Resources) []T {
	t.Helper()
	var out []T
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		if a, ok := m.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				t.Fatalf("unpack %s: %v", a.GetTypeUrl(), err)
			}
			walk(inner.ProtoReflect())
			return
		}
		if x, ok := m.Interface().(T); ok {
			out = append(out, x)
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					walk(mv.Message())
					return true
				})
			case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
				walk(v.Message())
			}
			return true
		})
	}
	for _, x := range r.Listeners {
		walk(x.ProtoReflect())
	}
	for _, x := range r.Clusters {
		walk(x.ProtoReflect())
	}
	for _, x := range r.Routes {
		walk(x.ProtoReflect())
	}
	for _, x := range r.Secrets {
		walk(x.ProtoReflect())
	}
	return out
}

func findListener(t testing.TB, r *Resources, name string) *listenerv3.Listener {
	t.Helper()
	for _, l := range r.Listeners {
		if l.GetName() == name {
			return l
		}
	}
	t.Fatalf("no listener %q", name)
	return nil
}

func findCluster(t testing.TB, r *Resources, name string) *clusterv3.Cluster {
	t.Helper()
	for _, c := range r.Clusters {
		if c.GetName() == name {
			return c
		}
	}
	t.Fatalf("no cluster %q", name)
	return nil
}

func findRoute(t testing.TB, r *Resources, name string) *routev3.RouteConfiguration {
	t.Helper()
	for _, rc := range r.Routes {
		if rc.GetName() == name {
			return rc
		}
	}
	t.Fatalf("no route configuration %q", name)
	return nil
}

func findSecret(t testing.TB, r *Resources, name string) *tlsv3.Secret {
	t.Helper()
	for _, s := range r.Secrets {
		if s.GetName() == name {
			return s
		}
	}
	t.Fatalf("no secret %q", name)
	return nil
}

func names[T interface{ GetName() string }](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.GetName()
	}
	return out
}

func newTestLogger(w *testenv.SyncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
