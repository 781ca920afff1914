// Package audit is sluice's record of who did what: the event schema, the
// durable stores (SQLite embedded, Postgres shared), the hash chains and
// signed checkpoints that make the record tamper-evident, query, retention
// and export. A gate forwards a statement or request only after Append
// has returned nil for its event (design.md section 8).
//
// # Events and chains
//
// Every process that writes is a writer with its own chain: a random id
// per start (WithWriterID fixes one per replica). The writer numbers its
// events 1, 2, 3… without gaps, and each stored record carries
//
//	hash = SHA-256(canonical body)
//	body = {"v":1,"writer":W,"seq":N,"prev":hash(N-1), …event fields…}
//
// The canonical body is the JSON of the versioned schema (record.go), with
// fields in schema order, UTC times and no HTML escaping. The store keeps
// the exact bytes that were hashed, so verification never depends on an
// encoder reproducing them. Columns used by queries (time, kind, subject,
// target, decision, classes, grant id, request, reason) are copies of body
// fields; verify checks they agree with the body, so editing a column to
// hide an event from queries is detected like editing the body. Text from
// the agent may hold bytes that are not UTF-8, and NUL: the body (JSON)
// holds U+FFFD for the first and \u0000 for NUL, and the columns U+FFFD
// for both, which both stores accept. A query for such text names U+FFFD;
// one naming the raw bytes is refused.
//
// One chain per writer keeps replicas independent (no shared counter, no
// cross-replica lock on the append path) and makes a chain's order the
// order its writer committed.
//
// # Checkpoints
//
// A checkpoint is a signed (ed25519) statement "chain W's event N has hash
// H". The writer commits one
//
//   - start: before its first append (seq 0): a chain without a signed
//     start was made up. It also witnesses the head (seq and hash) of
//     every other chain in the store as the writer found it, so a chain
//     cut short later, its own checkpoints deleted with it, still has to
//     reach what another chain's checkpoint saw (resume does the same);
//   - periodic: in the same transaction as the batch that reaches
//     checkpoint_every events since the last one, or on its own once
//     checkpoint_interval has passed with unsealed events. It witnesses
//     the other chains' heads that moved since this chain last witnessed
//     them (read off the commit path every checkpoint_interval), so that
//     replicas running side by side seal each other as they go;
//   - final: at Close: any event after it was inserted (it witnesses as a
//     periodic one does);
//   - retention: when events are pruned, naming the last removed event and
//     its hash, the base the rest of the chain links to.
//
// The key comes from audit.signing_key_file (see LoadSigningKey for the
// formats; `sluice audit keygen` writes one). Without a key file a sqlite
// store signs with a key generated at start and logs a warning (the demo
// stays runnable; verify proves chain consistency but not who signed);
// a postgres store refuses to start (OpenConfig).
//
// # Verification
//
// Verify reads the store in one snapshot (a read-only transaction), so
// that retention or a replica starting meanwhile is not taken for
// tampering. It checks each checkpoint's signature (against the trusted
// keys: the signer's and WithTrustedKeys), then walks each chain in seq
// order from its base, checking for each event: its hash, its link to the
// event before, its seq, its columns, and the checkpoint that sealed it,
// its own or another chain's start that witnessed it. It reports the first
// problem of each chain precisely: "chain W: event seq 17 altered (hash
// mismatch)", "event seq 18 missing", "inserted event at seq 18", "event
// seq 17 reordered (found after seq 18)", "checkpoint 3 signature
// invalid", "events seq 26–30 missing (checkpoint 4 sealed seq 30)",
// "events seq 13–30 missing (checkpoint 6 of chain V witnessed seq 30)",
// "the chain's signed start checkpoint is missing".
//
// What verification cannot see: a chain's events after the last head
// anything signed (its own last checkpoint, or the newest witness of it by
// a chain started later) are protected by the chain alone, so that tail
// can be cut off, its checkpoints with it, and so can the newest chain
// (events and checkpoints) as a whole, with no trace in the store. Verify
// notes unsealed tails; checkpoint_every and checkpoint_interval bound the
// unsealed part of a running chain, but the last checkpoints themselves are
// rows the database's owner can delete. What closes that gap is a copy
// elsewhere: an exporter (OTLP, JSON lines) carries each event's writer,
// seq and hash to a place the database's owner does not control.
//
// # Group commit and durability
//
// The writer is one goroutine per store (writer.go). Append encodes its
// event on the caller's goroutine, queues it and waits. The writer takes
// everything queued (up to max batch), numbers and hashes it, and commits
// it in one transaction; every Append of the batch then gets the commit's
// result. While a batch commits, the next one queues, so the commit cost
// is shared by all concurrent appends:
//
//	gate ──Append──▶ queue ──▶ writer: seq, hash ──▶ BEGIN; INSERT…; [checkpoint]; COMMIT ──▶ sync
//	gate ◀─────────────────────────────────────── nil or error ◀───────────────────────────┘
//
// SQLite runs in WAL mode with synchronous=NORMAL, and the writer itself
// fdatasyncs the WAL after each commit, answering the batch's appends only
// once that returns: an acknowledged batch survives power loss, not only a
// crash of sluice, as with synchronous=FULL. Doing the sync outside SQLite
// lets it overlap the next batch's inserts (one batch in flight: batch k+1
// is written while batch k is flushed, and is flushed after it), which at
// 64 concurrent appends raised throughput by about a fifth on a 2-vCPU VM.
// Only a batch of 16 or more is written early, though: a smaller one waits
// for the flush, gathering appends, because writing the WAL page the flush
// is sending to the disk made the flush stall (see awaitSync).
// A failed sync is sticky: every later append fails until restart,
// because after a failed fsync the kernel may have dropped pages that no
// later fsync reports (and SQLite's recovery would cut off everything
// after them). A committed but not yet synced batch is visible to queries
// for that short while; its appends have not been answered, so nothing it
// records has run. WAL checkpoints run on their own connection, off the
// commit path. Postgres commits with synchronous_commit=on, set on every
// connection: COMMIT returns after the WAL record is flushed on the server
// (and on synchronous standbys, if the server has them). A batch goes to
// Postgres in one round trip: a binary COPY, its own transaction; or, when
// it carries a checkpoint, its INSERTs pipelined in one implicit
// transaction.
//
// The SIGKILL tests kill a writing process mid-burst and check that every
// acknowledged append is in the store and the chains verify. They prove
// no Append returns before its commit; the fsync settings above are what
// make a commit outlive the machine.
//
// Failure: a commit that fails (database down, disk full, a commit past
// WithCommitTimeout) fails every append of its batch, and the writer
// rereads its chain head before the next batch, because a lost COMMIT
// reply may hide a commit that happened. Appends to a store that is down
// fail at once, bounded by the caller's context: gates refuse (fail
// closed); nothing is forwarded unaudited.
//
// Cancellation: an Append whose context ends before the writer takes it is
// dropped, never written; one whose context ends while its batch commits
// returns the context's error and the event is still written, once. An
// error therefore means "not known to be durable": the gate does not
// forward, and the trail may still show the event (a record of a statement
// that was refused). Nothing is written twice.
//
// # Retention
//
// Prune removes, per chain, the prefix of events older than the cutoff,
// in bounded transactions that each write a retention checkpoint, so that
// what remains verifies from the new base. RunRetention runs it on a
// schedule.
//
// # Export
//
// Exporters (OTLP logs, JSON lines) run behind the store, each from its
// own cursor kept in the store: a failing exporter never delays or fails
// an Append; it backs off (chain by chain, so one failing chain holds no
// other back) and catches up. Delivery is at least once. A process ships
// its own chain at each commit and, every 30 s, chains idle for a minute
// (a writer that stopped with events unshipped), found through the
// primary key. Nothing ships until the cursors have been read (retried
// until they are). A record that cannot be decoded (altered, or written by
// a newer sluice) is skipped with an error naming its chain and seq, as
// queries list it under skipped; `sluice audit verify` is what judges it.
// A JSON lines file is cut back to the last whole batch after a failed
// write; an exporter stuck writing is abandoned 5 s into Close, which
// loses nothing: the store still holds every event.
package audit
