// Package envoysim is a test stand-in for Envoy: it plays Envoy's side of the
// contract in shared/envoy-contract.md so that sluice's xDS control plane,
// ext_authz and network ext_proc services can be tested on machines where no
// Envoy binary exists. It is not a data plane: it is written for correctness
// of observable behaviour, not for speed, and nothing outside test/ may import
// it.
//
// # Using it from a test
//
//	sim := envoysim.New(envoysim.WithNode(&corev3.Node{Id: "node-1"}), envoysim.WithLogf(t.Logf))
//	defer sim.Close()
//	// Either subscribe to the control plane under test, like an Envoy node:
//	if err := sim.ConnectADS(adsAddr); err != nil { ... }
//	_ = sim.WaitFor(ctx, func() bool { return sim.XDS(envoysim.ListenerType).AcceptedVersion == "v1" })
//	// or give it resources directly:
//	err := sim.Apply(listeners, clusters, secrets)
//	conn, _ := net.Dial("tcp", sim.ListenerAddr("postgres"))
//	...
//	sim.RequireNoViolations(t) // ext_proc contract violations seen by the sim
//	sim.Stats().Get("network_ext_proc.sluice.empty_response_received")
//
// # Layers
//
//	Sim ── ConnectADS (ads.go: SotW client, ACK/NACK)        ┐
//	    └─ Apply, ApplyRoutes ────────────────────────────────┴─▶ applySecrets / applyClusters / applyListeners / applyRoutes
//	          strict acceptance (strict.go): Any unpacked and ValidateAll()'d, C++-only
//	          checks, populated fields the sim does not implement → rejected (NACK)
//	listener.go     accept loop, tls_inspector, filter chain selection, in-place updates,
//	                warming until SDS secrets and RDS route configurations arrive
//	dispatcher.go   one goroutine per downstream connection (or HTTP stream) runs every callback of it
//	connection.go   Envoy's ConnectionImpl: read buffer, half-close, readDisable,
//	                close types, the write path; socket I/O on a reader and a writer goroutine
//	filtermanager.go  Envoy's FilterManagerImpl: read filters in config order, write
//	                filters in reverse, injection resumes at the next filter,
//	                disableClose gating (connection_close_through_filter_manager)
//	postgres.go, extauthz.go, extproc.go, tcpproxy.go   the network filters
//	hcm.go, hcm_conn.go   http_connection_manager: net/http serves the connection (HTTP/1.1;
//	                HTTP/2 by ALPN or prior knowledge); hcm_headers.go: edge header
//	                handling (use_remote_address) and path normalization
//	httpstream.go, httpstream_encode.go   HCM's ActiveStream: one request on its own dispatcher,
//	                local replies (through every encoder filter), completion, reset
//	httpfilter.go   Envoy's Http::FilterManager iteration: StopIteration and StopAll,
//	                the stream buffer, continue, injection
//	httpextauthz*.go, httpextproc*.go, router.go, upstream.go   the HTTP filters
//	hcm_upgrade.go, httpstream_upgrade.go, router_upgrade.go   HTTP/1.1 upgrades:
//	                upgrade_configs, the hijacked downstream tunnel, the upstream 101
//	rds.go          route configurations (RDS or inline) and route matching
//	cluster.go, grpcclient.go, tls.go   upstreams, gRPC side channels, TLS contexts
//	starttls_upstream.go   startUpstreamSecureTransport: postgres_proxy → tcp_proxy →
//	                the upstream connection's starttls socket (connection.go switches it)
//	stats.go        Envoy stat names, violation counters, admin /stats
//
// # One connection through [postgres_proxy, ext_authz, ext_proc, tcp_proxy]
//
//	client        sim (dispatcher goroutine)                    authz   processor  upstream
//	  │ connect ─▶ filters created; onNewConnection in order;
//	  │            tcp_proxy read-disables and dials ─────────────────────────────────▶│ (§6: at accept)
//	  │            upstream Connected: reads enabled
//	  │ SSLRequest▶ postgres: "S" injected after itself; reads pause
//	  │◀─── "S" ── bytes sent → startSecureTransport (starttls socket)
//	  │ TLS ─────▶ handshake on the reader goroutine
//	  │ Startup ─▶ postgres: Continue; ext_authz: Check, StopIteration ─▶│
//	  │            (bytes stay in the read buffer)                      │
//	  │            OK ◀─────────────────────────────────────────────────┘ continueReading
//	  │            ext_proc: send read_data, drain, StopIteration ─────────────▶│
//	  │            response read_data ◀─────────────────────────────────────────┘
//	  │            injected to the next filter: tcp_proxy ────────────────────────────▶│
//	  │◀─────────  write path: ext_proc, then postgres, then the socket ◀──────────────│
//
// # postgres_proxy asking the server for TLS (upstream_ssl REQUIRE, contract §5)
//
//	client       [ext_authz,] postgres_proxy      ext_proc (after it)        server
//	  │ Startup ──▶ kept; SSLRequest injected ───▶ read chunk ─────────────▶ │
//	  │             "S" consumed ◀──────────────── write chunk "S" ◀──────── │
//	  │             startUpstreamSecureTransport (tcp_proxy's starttls socket) ══ TLS
//	  │             Startup injected ────────────▶ read chunk ─────────────▶ │
//	  │◀───────────── the session, decrypted below the filters ◀──────────── │
//
// ext_authz must come before postgres_proxy here: after its Check it resumes
// with the connection's read buffer, so it would drop the injected SSLRequest.
//
// # One HTTP request through [ext_authz, ext_proc, router] in sluice's modes
//
//	client          sim (the request's handler goroutine)            authz  processor  upstream
//	  │ headers ───▶ HCM: XFF, x-request-id, path normalized; route
//	  │              ext_authz: Check (pseudo-headers, context_extensions) ─▶│
//	  │              StopAllIteration; body chunks buffered                  │
//	  │              OK: header mutations, metadata ◀────────────────────────┘ continueDecoding
//	  │              ext_proc: request_headers (raw_value) ──────────────────────────▶│
//	  │              StopIteration; body held (BUFFERED)                              │
//	  │              headers answer ◀─────────────────────────────────────────────────┤ (§4 matching rule)
//	  │              whole body, end_of_stream ──────────────────────────────────────▶│
//	  │              body answer ◀────────────────────────────────────────────────────┘ continue
//	  │              router: host rewrite, timeout header, request ───────────────────────────▶│
//	  │              response_headers ─────────────────────────────────────────────▶│ ◀─────────┤
//	  │◀── headers   each chunk ─▶ answer ◀─ forwarded (STREAMED, FIFO) ───────────▶│ ◀─────────┤
//	  │◀── body      ext_authz encodeHeaders: response_headers_to_add
//
// # Fidelity notes
//
// Behaviour follows Envoy's C++ sources as cited in each file and in the
// contract sections (§0.1 filter chain, §1 network ext_proc, §2 network
// ext_authz, §3 HTTP ext_authz, §4 HTTP ext_proc, §5 postgres_proxy, §6
// tcp_proxy, §7 xDS). Deliberate differences:
//
//   - a connection's read is a goroutine blocked in Read, handed one token per
//     chunk by the dispatcher; a chunk is what arrived while the previous one
//     was processed, as in Envoy's event loop. A transport switch to TLS
//     calls a read in progress back (a read deadline) and holds writes until
//     it is back, so the peer's first TLS bytes are never read in clear text;
//   - an upstream TLS client presents its configured certificate whenever the
//     server asks, as BoringSSL does (Go would filter it by the server's
//     certificate_authorities);
//   - listener drain is not modelled: connections on a removed or updated
//     listener live until they end (Envoy closes them after the drain time);
//   - postgres_proxy does not parse SQL, so it produces no dynamic metadata; a
//     filter chain that forwards that namespace to a service is rejected;
//   - tcp_proxy implements upstream_connect_mode IMMEDIATE only; clusters are
//     STATIC, STRICT_DNS or LOGICAL_DNS with an inline load_assignment;
//   - HCM is served by net/http: it must be the only network filter of its
//     chain; Go does not keep the order of header lines, so regular request
//     headers reach filters sorted by key (pseudo-headers first); headers go
//     on the wire in canonical case (Envoy's HTTP/1 codec writes lower case);
//     local replies to gRPC requests are not gRPC-shaped;
//   - no watermarks: buffers are unbounded, so a BUFFERED body over the
//     buffer limit is not refused with 413; no stream idle or request
//     timeouts (Envoy's stream_idle_timeout defaults to 5 minutes);
//   - use_remote_address: no address is internal, so every request is an edge
//     request; a loopback peer's x-forwarded-for entry is the connection's
//     local address (Envoy appends its configured local address);
//   - normalize_path removes dot segments, decodes escaped unreserved
//     characters and upper-cases other escapes, which is what Envoy's
//     Chromium-derived canonicalizer does for the paths agents send;
//   - HTTP ext_authz sends no request body (with_request_body is rejected);
//     OkHttpResponse.headers get the ≤1.36 semantics, and mutations whose
//     effect differs between Envoy versions are counted (contract §3);
//   - HTTP ext_proc implements header modes SEND and SKIP, body modes NONE,
//     BUFFERED and STREAMED, trailers SKIP, and no mode override;
//   - the router retries nothing (a route without retry_policy does not
//     retry) and enforces no circuit breaker;
//   - upgrades: HTTP/1.1 only (no CONNECT, no route-level upgrade_configs,
//     none to an HTTP/2 cluster: 501); bytes an agent sends before the 101
//     reach the filters only after it (net/http reads nothing more until the
//     sim hijacks the connection); a tunnel's end is a reset, flushed for at
//     most delayed_close_timeout (1 s).
//
// # Violations
//
// Envoy tolerates processor behaviour that is almost always a bug in the
// processor. The sim counts it under envoysim.violations.* (see the
// Violation* constants) and RequireNoViolations fails a test when any is
// non-zero: chunks with bytes unanswered when the stream closed, empty
// responses, unsolicited responses, responses of the wrong type (both
// directions set; an HTTP ext_proc answer that does not match the direction's
// state), message timeouts, responses after processing completed,
// version-dependent ext_authz header mutations, header values Envoy does not
// read (ext_proc reads raw_value, ext_authz value), ext_proc response fields
// Envoy ignores, and ext_proc responses using features the sim does not
// implement. Other envoysim.*
// stats are the sim's own, not Envoy's: envoysim.delayed_closes counts closes
// latched by close gating.
package envoysim
