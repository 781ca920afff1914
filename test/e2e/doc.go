// Package e2e runs sluice end to end through test/envoysim, the Envoy
// stand-in, with real servers on loopback: sluice's xDS, ext_authz and
// ext_proc services, a real OIDC provider, Redis and Postgres, real
// clients (psql, pgx, pgbench, node-postgres when npm can install it).
// Every test asserts the stand-in's contract-violation counters are zero.
//
// Environment:
//
//   - SLUICE_PG_USER: the OS user Postgres runs as when the tests run as
//     root (.ci/run sets it).
//   - SLUICE_E2E_SIM_LOG=1: log every chunk and event envoysim sees.
//   - SLUICE_PGBENCH=1: also run TestPgbenchTPSRatios (pgbench TPS direct,
//     through a pass-through processor and through sluice).
//   - SLUICE_HTTP_BENCH=1: also run TestHTTPLatencyRatios (HTTP latency
//     direct, through the stand-in, through sluice).
package e2e
