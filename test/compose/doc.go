// Package compose checks that docker-compose.yaml, the sluice config it runs
// (policies/examples/compose.yaml), the Envoy bootstrap it mounts
// (envoy/bootstrap.yaml) and the files under deploy/ agree with each other,
// without a Docker engine: the compose file is loaded with compose-go, the
// same loader `docker compose` uses, and every check is a plain function over
// the loaded project so that a test can break the project and watch the
// check fail.
//
// What is checked (checks_test.go, idp_test.go):
//
//   - every target's port, and Envoy's admin port, is published by envoy;
//   - envoy mounts envoy/bootstrap.yaml at the path its -c flag names;
//   - sluice runs "sluice serve --config P" and mounts the repo's compose
//     config at P;
//   - every host the config names (sluice host, Redis, upstreams, issuers) is
//     a compose service;
//   - every secret the config references by environment variable is set for
//     sluice, and file references are mounted;
//   - the Postgres service is seeded with deploy/postgres/seed.sql, for the
//     target's database, with the same app password sluice presents;
//   - the IdP issues what sluice accepts (issuer port, audience, groups
//     claim) and sluice trusts its certificate.
//
// seed_test.go also runs deploy/postgres/seed.sql against a real Postgres 15
// started on loopback, and logs in as app_rw with SCRAM.
package compose
