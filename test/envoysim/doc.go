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
//	    └─ Apply ─────────────────────────────────────────────┴─▶ applySecrets / applyClusters / applyListeners
//	          strict acceptance (strict.go): Any unpacked and ValidateAll()'d, C++-only
//	          checks, populated fields the sim does not implement → rejected (NACK)
//	listener.go     accept loop, tls_inspector, filter chain selection, in-place updates
//	dispatcher.go   one goroutine per downstream connection runs every callback of it
//	connection.go   Envoy's ConnectionImpl: read buffer, half-close, readDisable,
//	                close types, the write path; socket I/O on a reader and a writer goroutine
//	filtermanager.go  Envoy's FilterManagerImpl: read filters in config order, write
//	                filters in reverse, injection resumes at the next filter,
//	                disableClose gating (connection_close_through_filter_manager)
//	postgres.go, extauthz.go, extproc.go, tcpproxy.go   the network filters
//	cluster.go, grpcclient.go, tls.go   upstreams, gRPC side channels, TLS contexts
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
// # Fidelity notes
//
// Behaviour follows Envoy's C++ sources as cited in each file and in the
// contract sections (§0.1 filter chain, §1 network ext_proc, §2 network
// ext_authz, §5 postgres_proxy, §6 tcp_proxy, §7 xDS). Deliberate differences:
//
//   - a connection's read is a goroutine blocked in Read, handed one token per
//     chunk by the dispatcher; a chunk is what arrived while the previous one
//     was processed, as in Envoy's event loop;
//   - listener drain is not modelled: connections on a removed or updated
//     listener live until they end (Envoy closes them after the drain time);
//   - postgres_proxy does not parse SQL, so it produces no dynamic metadata; a
//     filter chain that forwards that namespace to a service is rejected;
//   - tcp_proxy implements upstream_connect_mode IMMEDIATE only; clusters are
//     STATIC, STRICT_DNS or LOGICAL_DNS with an inline load_assignment;
//   - HTTP (HCM, HTTP ext_authz, HTTP ext_proc, router) is not implemented yet:
//     a listener using it is rejected.
//
// # Violations
//
// Envoy tolerates processor behaviour that is almost always a bug in the
// processor. The sim counts it under envoysim.violations.* (see the
// Violation* constants) and RequireNoViolations fails a test when any is
// non-zero: chunks with bytes unanswered when the stream closed, empty
// responses, unsolicited responses, responses with both directions set,
// message timeouts, responses after processing completed. Other envoysim.*
// stats are the sim's own, not Envoy's: envoysim.delayed_closes counts closes
// latched by close gating.
package envoysim
