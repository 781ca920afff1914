// Package testenv starts real servers on loopback for tests: an OIDC
// provider (zitadel/oidc's op package) issuing client-credentials tokens,
// redis-server, and — as the Postgres path lands — a fresh Postgres cluster.
// Each starter binds 127.0.0.1 on a free port and stops its server in
// t.Cleanup. Nothing here is mocked: the servers are the real programs or
// certified libraries, so tests exercise the protocols sluice speaks in
// production.
package testenv
