// Package postgres is sluice's view of one Postgres connection: a byte
// stream rewriter that sits in Envoy's network ext_proc filter, between an
// agent and the target, and sees every byte in both directions
// (design.md section 6; shared/envoy-contract.md sections 1 and 5).
//
// It is pure: bytes in, bytes out, decisions through interfaces
// (Authenticator for the token, Gate for statements, CancelKeys for
// cancel requests). extproc adapts it to Envoy's gRPC protocol; nothing
// here knows gRPC or Envoy.
//
// # Layers
//
//	frame.go    framer: one direction's bytes → whole messages, whatever the
//	            chunking (typed, startup packet, or the one-byte answer to an
//	            encryption request); limits from the Postgres source
//	session.go  Session: FromClient/FromServer, one Reply per chunk; dispatch
//	            by phase, one method per message
//	startup.go  SSLRequest, GSSENCRequest, CancelRequest, StartupMessage
//	auth.go     the authentication swap and refusals; scram.go: SCRAM-SHA-256
//	            (xdg-go/scram) and md5
//	query.go    the statement gate: Query, Parse, FunctionCall; deny rewriting
//	gate.go     Gate, Statement, Verdict; MarkerGate
//
// # The balance rule
//
// Envoy sends a chunk of bytes per read event, per direction, and injects
// whatever the response to it carries; responses are matched to chunks by
// direction only. So every FromClient and FromServer call returns exactly
// one Reply, whose Data goes on in that chunk's direction (possibly empty,
// never absent), and the session has no other way to emit anything. Bytes
// for the server can only ride on the reply to a client chunk (a "read
// slot"), bytes for the client only on the reply to a server chunk (a
// "write slot"). When sluice needs a slot the peer will not give, it makes
// the other side produce one:
//
//   - Write slot before the StartupMessage (to answer SSLRequest or
//     GSSENCRequest 'N'): send the server an SSLRequest of its own; a
//     server without TLS answers 'N'.
//   - Write slot after a trust login: send the server a Sync. The server
//     reads nothing between the StartupMessage and its main loop, so the
//     Sync, whenever it arrives, is read after the server's own
//     ReadyForQuery and answered by a second one. (An empty Query would
//     also be answered, with EmptyQueryResponse and ReadyForQuery, at the
//     cost of a parse; Flush is answered by nothing.)
//   - Second read slot for SCRAM's client-final message: ask the client for
//     its password again (AuthenticationCleartextPassword a second time);
//     libpq and pgx both answer it.
//   - Write slot to refuse a login: make the upstream handshake fail, so
//     the server's FATAL (or, in trust mode, the Sync's ReadyForQuery) is
//     replaced by sluice's FATAL.
//   - No slot at all (a refusal before the server has said anything):
//     Reply.Close, and Envoy closes the connection.
//
// # A connection
//
//	agent                    sluice (Session)                          target
//	  │ StartupMessage ─────▶ record params; user, database := target's ──▶│
//	  │                       (SSLRequest first? → SSLRequest ──▶, 'N' ◀── │; 'N' to the agent)
//	  │◀── AuthenticationCleartextPassword ◀── any auth request ◀──────────│
//	  │ PasswordMessage(token) ▶ Authenticator: verify, may connect, audit
//	  │
//	  │   password:  ──────── PasswordMessage(target password) ───────────▶│
//	  │   md5:       ──────── PasswordMessage(md5(md5(pw+user)+salt)) ─────▶│
//	  │   scram:     ──────── SASLInitialResponse(client-first) ──────────▶│
//	  │◀── AuthenticationCleartextPassword ◀── AuthenticationSASLContinue ◀│
//	  │ PasswordMessage(token, again) ▶ same token? ─ SASLResponse(final) ▶│
//	  │                       check server signature; drop ◀ SASLFinal ────│
//	  │   trust:     (AuthenticationOk … ReadyForQuery held since the start)
//	  │                       ──────── Sync ──────────────────────────────▶│
//	  │◀── held messages ──── drop the Sync's ◀── ReadyForQuery ───────────│
//	  │◀── AuthenticationOk, ParameterStatus, BackendKeyData, ReadyForQuery│
//	  │
//	  │ Query ──────────────▶ Gate.Decide: allow ─── Query ───────────────▶│
//	  │◀───────────────────── rows, CommandComplete, ReadyForQuery ◀───────│
//	  │ Query ──────────────▶ Gate.Decide: deny ─── DO $$ RAISE 42501 $$ ─▶│
//	  │◀── ErrorResponse(sluice's reason) ◀── ErrorResponse(marker) ◀──────│
//	  │◀───────────────────── ReadyForQuery('E' inside a transaction) ◀────│
//	  │
//	  │ bad token:   password/md5: PasswordMessage("") ───────────────────▶│
//	  │              scram: SASLInitialResponse("sluice-refused") ─────────▶│
//	  │              trust: Sync, Terminate ──────────────────────────────▶│
//	  │◀── FATAL 28P01/28000 (sluice's reason), end ◀── FATAL / ReadyForQuery
//
// # Phases
//
// The Session's explicit state (states.go):
//
//	startup → [negotiating → startup] → server_auth → client_token
//	client_token → auth_result (password, md5)
//	client_token → scram_continue → client_token_again → scram_final → auth_result
//	client_token → trust_sync (trust)
//	auth_result, trust_sync → ready
//	client_token, client_token_again → refusing → ended
//	startup → cancel (a CancelRequest with a known key)
//	any → ended (sluice's FATAL, or a Close)
//
// In ready, the session also keeps the transaction status of the last
// ReadyForQuery, the messages awaiting a ReadyForQuery, the denials
// whose error has not come back yet, and the tracker (see Results).
//
// # Denials
//
// A denied statement is replaced, never dropped, so that the server itself
// produces the error and the transaction state is exactly what Postgres
// makes of an error at that point: a Query by a DO block raising 42501
// (insufficient_privilege) with a random marker, a Parse by text that
// fails to parse with the marker in the message, a FunctionCall by the
// denying Query. Only an ErrorResponse carrying that exact marker is
// rewritten; in an already-failed transaction the server answers 25P02 and
// that passes unchanged, as it would have for the original statement.
//
// # Results: masking and budgets
//
// An allowed statement's Verdict may carry a ResultPlan: which columns its
// rows mask by rule (the gate answers from lineage), the detectors for the
// rest, and max_rows/max_bytes. To apply it the session must know which
// client message every server message answers, so the tracker (track.go)
// mirrors the server's rules: answers come in order; a Query, FunctionCall
// or Sync ends with ReadyForQuery; after an extended-protocol error the
// server skips to Sync. It also follows prepared statements and portals:
// their plan (from the Parse), their description (from a Describe) and the
// result formats (from the Bind). A server message the tracker cannot
// place ends the session with 08P01: sluice never passes rows it cannot
// attribute.
//
//	Query ─────────────▶ plan P ──────────────────────── Query ─────────▶│
//	│◀── RowDescription (set 0) ◀────────────────────────────────────────│
//	│◀── DataRow, each column: pass │ mask.Value │ detectors ◀── DataRow ─│
//	│◀── CommandComplete, or 54000 when a budget cut the set short ◀─────│
//	Parse/Bind/Execute ▶ no description known and P masks ─▶ + Describe(P)
//	│      (its RowDescription is sluice's own: it never reaches the client)
//
// Rows stream: one DataRow is rewritten into a buffer reused for the next,
// and an unmasked row is the chunk's own bytes. A budget drops the rows
// past it and answers the set's CommandComplete (or CopyDone, or
// PortalSuspended) with 54000; the statement has run to completion on the
// server. A portal's budget spans its Executes. COPY TO STDOUT rows in
// text format are masked field by field (COPY names no columns, so every
// field a rule could cover is masked); binary COPY under a masking plan is
// refused. Errors and notices of a masked statement have detector hits
// redacted and, under column rules, their DETAIL (where Postgres quotes
// values, "Key (email)=(…)") withheld.
//
// # Debugging
//
// testdata/conversations holds wire conversations (one message per line)
// that TestConversations replays whole and a byte at a time; a new
// behaviour gets a conversation there first. go test -fuzz FuzzSession and
// FuzzFramer start from testdata/fuzz.
package postgres
