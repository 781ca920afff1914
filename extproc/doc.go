// Package extproc adapts sluice's filters to Envoy's external processing
// protocols: the network external processor for Postgres targets
// (envoy.service.network_ext_proc.v3) and the HTTP one for HTTP targets
// (envoy.service.ext_proc.v3).
//
// # Network ext_proc
//
// Envoy opens one Process stream per downstream connection, lazily, at the
// connection's first chunk (shared/envoy-contract.md section 1.2), and
// sends every chunk of both directions without waiting for answers
// (section 1.3). NetworkServer serves each stream with one goroutine that
// owns one postgres.Session:
//
//	Envoy                          NetworkServer (one goroutine per stream)
//	  │ read_data + metadata ─────▶ first chunk: target from
//	  │                             filter_metadata["envoy.filters.network.ext_authz"]
//	  │                             unknown target / no metadata / audit down → CLOSE
//	  │                             audit session.start; postgres.New(target)
//	  │◀─ read_data ───────────────  Session.FromClient
//	  │ write_data ───────────────▶ Session.FromServer
//	  │◀─ write_data ──────────────
//	  │   …                         (authentication: audit authn before it takes effect)
//	  │ half-close / RST_STREAM ──▶ Recv fails: audit session.end, cancel key forgotten
//
// The rules it keeps (section 1.4):
//
//   - every read_data chunk is answered by exactly one response carrying
//     read_data, every write_data chunk by one carrying write_data, in
//     order, with data present even when empty; nothing else is ever sent;
//   - a refusal with no write slot is a CLOSE response (Envoy drops its
//     data and closes the connection, flushing what was written);
//   - end_of_stream is passed on (or set, when sluice ends a direction),
//     since the processor controls half-close;
//   - the target is read from the ext_authz metadata the listener forwards,
//     the only way a network ext_proc stream learns it (section 1.1).
//
// Sluice's Envoy bootstrap turns on
// envoy.reloadable_features.connection_close_through_filter_manager
// (section 0.1), so that a close caused by the server (after its FATAL)
// waits for sluice's answer to the chunk holding that FATAL.
//
// # HTTP ext_proc
//
// One stream per HTTP request (envoy-contract.md section 4). HTTPServer
// serves it with one exchange:
//
//	request_headers + metadata ─▶ the ext_authz decision (target, principal,
//	                              masks) from filter_metadata; none → 403
//	                              masking: ask upstream for identity-encoded
//	                              (Kubernetes: application/json) bodies
//	                              no body follows: record http.request
//	                              durably before answering, else 503
//	request_body (buffered) ───▶ digested; record http.request (method,
//	                              path, decision, body size and digest)
//	                              durably before answering, else 503:
//	                              Envoy forwards nothing of the request
//	                              until this answer
//	response_headers ──────────▶ unmaskable body (gzip, protobuf, not
//	                              JSON) → 502; Content-Length removed when
//	                              the body may change
//	response_body × n ─────────▶ JSON: held, answered empty, the masked
//	                              document in the last answer (bounded);
//	                              watch: masked event by event; else passed
//	stream end ────────────────▶ http.response: status, bytes, digest,
//	                              masked paths (a body that flowed past
//	                              sluice: Content-Length, no digest)
//
// A response_headers with no request before it is a local reply of an
// earlier filter (ext_authz's refusal, which it recorded itself), which
// Envoy encodes through every filter: it passes untouched. A body that
// cannot be masked once its headers have gone ends the stream with an
// ImmediateResponse, which Envoy turns into a reset: the agent sees a
// broken response, never an unmasked one.
//
// # Audit
//
// session.start before the first byte moves, authn before a login takes
// effect (a failed Append refuses it with 57P03), session.end when the
// stream ends. Statement events come with the statement gate's decision.
package extproc
