// Package bootstrap renders the Envoy bootstrap that points an Envoy at
// sluice's aggregated discovery service (ADS).
//
// The bootstrap is the only static Envoy configuration sluice ships. It
// holds what Envoy needs before it can talk to sluice, and nothing else:
//
//   - node: id = envoy.node, the key sluice publishes its snapshot under
//     (envoy-contract.md section 7, "Node hashing"), cluster "sluice";
//   - admin: envoy.admin_address;
//   - dynamic_resources: ads_config over gRPC (SotW, or DELTA_GRPC when
//     envoy.delta is set) to the static cluster "sluice_xds"; LDS and CDS
//     come over ADS, and everything else (routes, secrets) hangs off them;
//   - static_resources: the one cluster "sluice_xds", HTTP/2, STRICT_DNS,
//     at SluiceHost():<port of server.xds>, so a compose service name or a
//     Kubernetes service name works as well as an address;
//   - layered_runtime: a static layer with the runtime flags sluice's filters
//     rely on, and an admin layer so an operator can inspect them.
//
// Render builds the bootstrap from go-control-plane's Go protos, validates
// it with the PGV rules (including every google.protobuf.Any unpacked, since
// PGV does not descend into Any: envoy-contract.md section 7) and prints it
// as YAML with the proto field order kept, so the file reads like Envoy's own
// examples. `sluice envoy bootstrap --config FILE` prints the same bytes.
package bootstrap
