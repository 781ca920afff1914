package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/policies"
)

// ByType groups the resources by xDS type URL, as cachev3.NewSnapshot
// takes them.
func (r *Resources) ByType() map[resource.Type][]types.Resource {
	m := map[resource.Type][]types.Resource{
		resource.ListenerType: make([]types.Resource, 0, len(r.Listeners)),
		resource.ClusterType:  make([]types.Resource, 0, len(r.Clusters)),
		resource.RouteType:    make([]types.Resource, 0, len(r.Routes)),
		resource.SecretType:   make([]types.Resource, 0, len(r.Secrets)),
	}
	for _, x := range r.Listeners {
		m[resource.ListenerType] = append(m[resource.ListenerType], x)
	}
	for _, x := range r.Clusters {
		m[resource.ClusterType] = append(m[resource.ClusterType], x)
	}
	for _, x := range r.Routes {
		m[resource.RouteType] = append(m[resource.RouteType], x)
	}
	for _, x := range r.Secrets {
		m[resource.SecretType] = append(m[resource.SecretType], x)
	}
	return m
}

// Hash is the hex SHA-256 of the deterministic encoding of every resource,
// in order. Equal resources give equal hashes across runs and processes.
func (r *Resources) Hash() (string, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	for _, group := range [][]proto.Message{
		msgs(r.Listeners), msgs(r.Clusters), msgs(r.Routes), msgs(r.Secrets),
	} {
		// A separator per group, so moving a resource between types
		// changes the hash.
		h.Write([]byte{0xff})
		for _, m := range group {
			var err error
			buf, err = opts.MarshalAppend(buf[:0], m)
			if err != nil {
				return "", fmt.Errorf("xds: hash %T: %w", m, err)
			}
			fmt.Fprintf(h, "%d:", len(buf))
			h.Write(buf)
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func msgs[T proto.Message](xs []T) []proto.Message {
	out := make([]proto.Message, len(xs))
	for i, x := range xs {
		out[i] = x
	}
	return out
}

// Snapshot builds the cache snapshot for version and checks that it is
// consistent (every RDS name an HCM references is present, and nothing
// else is: envoy-contract.md section 7). It does not call Validate.
func (r *Resources) Snapshot(version string) (*cachev3.Snapshot, error) {
	snap, err := cachev3.NewSnapshot(version, r.ByType())
	if err != nil {
		return nil, fmt.Errorf("xds: snapshot %s: %w", version, err)
	}
	if err := snap.Consistent(); err != nil {
		return nil, fmt.Errorf("xds: snapshot %s is inconsistent: %w", version, err)
	}
	return snap, nil
}

// Build translates cfg, validates the result and builds a consistent
// snapshot for version: everything Server.Update does except publishing.
func Build(cfg *policies.Config, version string) (*Resources, *cachev3.Snapshot, error) {
	res, err := Translate(cfg)
	if err != nil {
		return nil, nil, err
	}
	if err := res.Validate(); err != nil {
		return nil, nil, err
	}
	snap, err := res.Snapshot(version)
	if err != nil {
		return nil, nil, err
	}
	return res, snap, nil
}
