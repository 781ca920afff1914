// Package e2e runs sluice end to end through test/envoysim, the Envoy
// stand-in, with real servers on loopback: sluice's xDS, ext_authz (and, as
// they land, ext_proc) services, a real OIDC provider, Redis and Postgres.
// Every test asserts the stand-in's contract-violation counters are zero.
package e2e
