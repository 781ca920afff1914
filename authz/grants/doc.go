// Package grants is sluice's just-in-time grants (design.md section 8): a
// principal asks for operation classes, or for one statement (by its
// fingerprint), on a target for a while; a human approver decides; the
// decision (policies.Config.Decide) consumes the approved, unexpired ones
// through Store.Active.
//
// # Lifecycle
//
//	Create ──▶ pending ──── Deny ─────────────────────▶ denied
//	             │   │
//	             │   └── PendingExpiresAt passes ──▶ expired
//	          Approve                                   ▲
//	  (ExpiresAt = now + Duration)                      │
//	             ▼                                      │
//	          approved ──── ExpiresAt passes ───────────┘
//	             │
//	          Revoke
//	             ▼
//	          revoked
//
// Every transition is explicit and checked in one place (apply in
// transition.go), which both stores share: approve and deny only from
// pending (else ErrNotPending), revoke only from approved (else
// ErrNotApproved), nothing once expired (ErrExpired), and never by the
// requester or the human it acts for (ErrSelfApproval). Which groups may
// approve is the caller's check (policies approvers.groups); the store only
// refuses self-decisions, whoever calls it.
//
// # Time
//
// Expiry is a timestamp comparison on every read (Grant.StateAt), so an
// approved grant stops counting the instant its ExpiresAt passes, with no
// timer or sweeper in the way. The first transition attempted on a grant
// found expired records the expiry and publishes it. Times are injected:
// transitions and Active take the caller's now, Create, Get and List use
// the store's Clock (WithClock); tests advance a fake clock and never
// sleep. Stored times are whole milliseconds in UTC.
//
// Stores forget a grant its retention (WithRetention, default 24h) after it
// ends: Redis by key TTLs, the embedded store by pruning on Create. The
// audit trail, not the store, is the permanent record.
//
// # Stores
//
// RedisStore (redis.go, redis_transition.go) shares grants between sluice
// replicas. A transition is one Lua script: compare the state, write the
// grant, update the active index, PUBLISH the event. Concurrent approve and
// deny of one request therefore have exactly one winner; the loser reads
// the new state and gets ErrNotPending. Active is one ZRANGEBYSCORE on a
// per-principal, per-target sorted set scored by expiry, whose members
// carry the grant's ID, classes and fingerprint. A Redis that is down or
// slow makes calls return errors by their ctx deadline; callers deny.
//
// EmbeddedStore (embedded.go) is the same in memory for a single node.
//
// # Events
//
// Subscribe delivers an Event for every transition (requested, approved,
// denied, revoked, expired), in order, so that a statement held for
// approval wakes at once. A subscriber more than its buffer behind is cut
// off (its channel closed) rather than allowed to block transitions or to
// miss events unknowingly; it subscribes again and re-reads the grant.
// With Redis, events published while the subscription is reconnecting are
// lost (Redis pub/sub keeps nothing), so a waiter also re-reads the grant
// when its wait ends.
//
// # Tests
//
// suite_test.go is one suite run against both stores; the Redis runs use a
// real redis-server started by test/testenv.StartRedis.
package grants
