package grants

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/policies"
)

// transitionScript moves a grant from one state to the next if it is still
// in the first: the compare-and-set that makes concurrent approve and deny
// race safely. It maintains the active index and publishes the event in
// the same atomic step. It returns "ok", "missing" or the current state.
//
// KEYS: grant hash, active index.
// ARGV: from, to, grant JSON, grant TTL ms, active op (add, rem or none),
// active member, its score (expiry ms), active index TTL ms, now ms,
// channel, event JSON.
var transitionScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 'missing' end
if cur ~= ARGV[1] then return cur end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'json', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] == 'add' then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[9])
  redis.call('ZADD', KEYS[2], ARGV[7], ARGV[6])
  redis.call('HSET', KEYS[1], 'member', ARGV[6])
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[8]) then
    redis.call('PEXPIRE', KEYS[2], ARGV[8])
  end
elseif ARGV[5] == 'rem' then
  local m = redis.call('HGET', KEYS[1], 'member')
  if m then redis.call('ZREM', KEYS[2], m) end
end
redis.call('PUBLISH', ARGV[10], ARGV[11])
return 'ok'
`)

// maxAttempts bounds the retries of a transition that lost a race. A lost
// race changes the state, and every state but pending and approved is
// final, so the second attempt already ends it.
const maxAttempts = 3

// activeSlack keeps an active index a little past its last expiry.
const activeSlack = time.Minute

// Approve approves a pending request.
func (s *RedisStore) Approve(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(ctx, id, StateApproved, approver, note, now)
}

// Deny denies a pending request.
func (s *RedisStore) Deny(ctx context.Context, id string, approver policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(ctx, id, StateDenied, approver, note, now)
}

// Revoke ends an approved grant.
func (s *RedisStore) Revoke(ctx context.Context, id string, by policies.Principal, note string, now time.Time) (Grant, error) {
	return s.transition(ctx, id, StateRevoked, by, note, now)
}

// transition reads the grant, applies the transition in Go (the same code
// as EmbeddedStore) and writes it with a compare-and-set on the state it
// read. A grant's requester and target never change, so the keys computed
// from the first read stay right.
func (s *RedisStore) transition(ctx context.Context, id string, to State, by policies.Principal, note string, now time.Time) (Grant, error) {
	for range maxAttempts {
		cur, err := s.load(ctx, id)
		if err != nil {
			return Grant{}, err
		}
		next, persist, applyErr := apply(cur, to, by, note, now)
		if !persist {
			return Grant{}, applyErr
		}
		res, err := s.compareAndSet(ctx, cur, next, now)
		if err != nil {
			return Grant{}, fmt.Errorf("%s grant %s: %w", verb(to), id, err)
		}
		switch res {
		case "ok":
			if applyErr != nil {
				return Grant{}, applyErr
			}
			return next, nil
		case "missing":
			return Grant{}, fmt.Errorf("grant %s: %w", id, ErrNotFound)
		}
	}
	return Grant{}, fmt.Errorf("%s grant %s: state kept changing", verb(to), id)
}

func (s *RedisStore) compareAndSet(ctx context.Context, cur, next Grant, now time.Time) (string, error) {
	b, err := json.Marshal(next)
	if err != nil {
		return "", err
	}
	ev, err := json.Marshal(Event{Kind: eventFor(next.State), Grant: next})
	if err != nil {
		return "", err
	}
	op, member, score, activeTTL := "none", "", "0", "0"
	switch {
	case next.State == StateApproved:
		op, member, score = "add", activeMember(next), msArg(next.ExpiresAt)
		activeTTL = strconv.FormatInt((next.ExpiresAt.Sub(now) + activeSlack).Milliseconds(), 10)
	case cur.State == StateApproved:
		op = "rem"
	}
	keys := []string{s.grantKey(cur.ID), s.activeKey(cur.Requester.Issuer, cur.Requester.Subject, cur.Target)}
	return transitionScript.Run(ctx, s.rdb, keys,
		cur.State.String(), next.State.String(), b, s.cfg.keepFor(next, now).Milliseconds(),
		op, member, score, activeTTL, msArg(now), s.channel(), ev,
	).Text()
}

// Subscribe delivers every transition until ctx ends. It returns once
// Redis has confirmed the subscription, so no transition after it is
// missed. Events published while the connection is being re-established
// are lost (Redis pub/sub keeps nothing), so a waiter also re-reads the
// grant when it gives up waiting. A subscriber more than the subscriber
// buffer behind is cut off.
func (s *RedisStore) Subscribe(ctx context.Context) (<-chan Event, error) {
	ps := s.rdb.Subscribe(ctx, s.channel())
	if _, err := ps.Receive(ctx); err != nil {
		ps.Close()
		return nil, fmt.Errorf("subscribe to grant events: %w", err)
	}
	out := make(chan Event, s.cfg.subBuffer)
	go func() {
		// This goroutine owns ps and out.
		defer ps.Close()
		forward(ctx, ps.Channel(redis.WithChannelSize(s.cfg.subBuffer)), out)
	}()
	return out, nil
}

// forward decodes messages into out until ctx ends, msgs closes or out is
// full (a subscriber too slow is cut off), then closes out.
func forward(ctx context.Context, msgs <-chan *redis.Message, out chan<- Event) {
	defer close(out)
	for {
		select {
		case <-ctx.Done():
			return
		case m, ok := <-msgs:
			if !ok {
				return
			}
			var ev Event
			if err := json.Unmarshal([]byte(m.Payload), &ev); err != nil {
				continue // not ours; the channel is shared by name
			}
			select {
			case out <- ev:
			default:
				return
			}
		}
	}
}
