package grants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluicehq/sluice/policies"
)

// RedisStore keeps grants in Redis so that every replica sees the same
// state. Keys, all under the prefix:
//
//	g:<id>                          hash: state, json (the Grant), member
//	all, t:<target>, s:<subject>    sorted sets of IDs by creation time (List)
//	a:<target>:<issuer>:<subject>   sorted set of active members by expiry (Active)
//	events                          the pub/sub channel (Event JSON)
//
// Components are query-escaped. Each key expires: a grant's hash its
// retention after the grant ends, the indexes once nothing in them can
// matter. Transitions are one Lua script each, so a check of the state and
// the write that follows are atomic, and the PUBLISH happens in the same
// step, in transition order.
type RedisStore struct {
	rdb redis.UniversalClient
	cfg config
	own bool
}

var _ Store = (*RedisStore)(nil)

// NewRedisStore uses rdb, which the caller owns and closes. Set
// ContextTimeoutEnabled on it so that calls end at their ctx deadline
// (OpenRedis does).
func NewRedisStore(rdb redis.UniversalClient, opts ...Option) *RedisStore {
	return &RedisStore{rdb: rdb, cfg: newConfig(opts)}
}

// OpenRedis connects to a redis:// or rediss:// URL (grants.store). It does
// not dial: a Redis that is down shows as errors from the calls.
//
// Calls end at their ctx deadline, and unless the URL says otherwise
// (dial_timeout, max_retries) a Redis that refuses connections fails a call
// in milliseconds: one dial attempt, one retry, a 1s dial timeout. Every
// decision waits on Active, and a fast failure denies sooner than a slow
// one.
func OpenRedis(rawURL string, opts ...Option) (*RedisStore, error) {
	o, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("grants store: %w", err)
	}
	o.ContextTimeoutEnabled = true
	if o.DialerRetries == 0 {
		o.DialerRetries = 1
	}
	if o.MaxRetries == 0 {
		o.MaxRetries = 1
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = time.Second
	}
	s := NewRedisStore(redis.NewClient(o), opts...)
	s.own = true
	return s, nil
}

// Close closes the client if OpenRedis made it.
func (s *RedisStore) Close() error {
	if s.own {
		return s.rdb.Close()
	}
	return nil
}

func esc(s string) string { return url.QueryEscape(s) }

func (s *RedisStore) grantKey(id string) string  { return s.cfg.prefix + "g:" + id }
func (s *RedisStore) allKey() string             { return s.cfg.prefix + "all" }
func (s *RedisStore) targetKey(t string) string  { return s.cfg.prefix + "t:" + esc(t) }
func (s *RedisStore) subjectKey(x string) string { return s.cfg.prefix + "s:" + esc(x) }
func (s *RedisStore) channel() string            { return s.cfg.prefix + "events" }
func (s *RedisStore) activeKey(issuer, subject, target string) string {
	return s.cfg.prefix + "a:" + esc(target) + ":" + esc(issuer) + ":" + esc(subject)
}

func msArg(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }

// Create records a pending request.
func (s *RedisStore) Create(ctx context.Context, in Grant) (Grant, error) {
	now := s.cfg.clock.Now()
	g, err := s.cfg.newGrant(in, now)
	if err != nil {
		return Grant{}, err
	}
	b, err := json.Marshal(g)
	if err != nil {
		return Grant{}, err
	}
	ev, err := json.Marshal(Event{Kind: EventRequested, Grant: g})
	if err != nil {
		return Grant{}, err
	}
	dead := "(" + msArg(now.Add(-s.cfg.horizon()))
	k := s.grantKey(g.ID)
	// The caller may have chosen the ID (NewID): WATCH makes sure it
	// overwrites nothing, even a grant created meanwhile.
	err = s.rdb.Watch(ctx, func(tx *redis.Tx) error {
		n, err := tx.Exists(ctx, k).Result()
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("%w: grant %s already exists", ErrInvalid, g.ID)
		}
		_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
			p.HSet(ctx, k, "state", g.State.String(), "json", b)
			p.PExpire(ctx, k, s.cfg.keepFor(g, now))
			for _, idx := range []string{s.allKey(), s.targetKey(g.Target), s.subjectKey(g.Requester.Subject)} {
				p.ZAdd(ctx, idx, redis.Z{Score: float64(g.CreatedAt.UnixMilli()), Member: g.ID})
				p.ZRemRangeByScore(ctx, idx, "-inf", dead)
				p.PExpire(ctx, idx, s.cfg.horizon())
			}
			p.Publish(ctx, s.channel(), ev)
			return nil
		})
		return err
	}, k)
	if errors.Is(err, ErrInvalid) {
		return Grant{}, err
	}
	if err != nil {
		return Grant{}, fmt.Errorf("create grant: %w", err)
	}
	return g, nil
}

// Get returns a grant with its state as of now.
func (s *RedisStore) Get(ctx context.Context, id string) (Grant, error) {
	g, err := s.load(ctx, id)
	if err != nil {
		return Grant{}, err
	}
	g.State = g.StateAt(s.cfg.clock.Now())
	return g, nil
}

// load returns the grant as recorded.
func (s *RedisStore) load(ctx context.Context, id string) (Grant, error) {
	b, err := s.rdb.HGet(ctx, s.grantKey(id), "json").Bytes()
	if errors.Is(err, redis.Nil) {
		return Grant{}, fmt.Errorf("grant %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Grant{}, fmt.Errorf("get grant %s: %w", id, err)
	}
	var g Grant
	if err := json.Unmarshal(b, &g); err != nil {
		return Grant{}, fmt.Errorf("grant %s: corrupt record: %w", id, err)
	}
	return g, nil
}

// listBatch is how many IDs List reads from an index at a time.
const listBatch = 100

// List returns the grants that match, newest first. It walks the most
// selective index and filters the rest; IDs whose grant has expired from
// Redis are removed from the index on the way.
func (s *RedisStore) List(ctx context.Context, f Filter) ([]Grant, error) {
	now := s.cfg.clock.Now()
	limit := f.limit()
	idx := s.allKey()
	switch {
	case f.Target != "":
		idx = s.targetKey(f.Target)
	case f.Subject != "":
		idx = s.subjectKey(f.Subject)
	}
	var out []Grant
	var stale []any
	for start := int64(0); len(out) < limit; start += listBatch {
		ids, err := s.rdb.ZRevRange(ctx, idx, start, start+listBatch-1).Result()
		if err != nil {
			return nil, fmt.Errorf("list grants: %w", err)
		}
		cmds, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, id := range ids {
				p.HGet(ctx, s.grantKey(id), "json")
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("list grants: %w", err)
		}
		for i, c := range cmds {
			b, err := c.(*redis.StringCmd).Bytes()
			if errors.Is(err, redis.Nil) {
				stale = append(stale, ids[i])
				continue
			}
			var g Grant
			if err != nil || json.Unmarshal(b, &g) != nil {
				return nil, fmt.Errorf("list grants: grant %s unreadable: %v", ids[i], err)
			}
			if f.match(g, now) && len(out) < limit {
				g.State = g.StateAt(now)
				out = append(out, g)
			}
		}
		if len(ids) < listBatch {
			break
		}
	}
	if len(stale) > 0 {
		// Best effort: the next List retries what this one could not.
		_ = s.rdb.ZRem(ctx, idx, stale...).Err()
	}
	return out, nil
}

// Active returns the principal's approved, unexpired grants on target: one
// ZRANGEBYSCORE whose members carry what the decision needs.
func (s *RedisStore) Active(ctx context.Context, p policies.Principal, target string, now time.Time) ([]policies.Grant, error) {
	members, err := s.rdb.ZRangeByScore(ctx, s.activeKey(p.Issuer, p.Subject, target), &redis.ZRangeBy{
		Min: "(" + msArg(now), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("active grants: %w", err)
	}
	if len(members) == 0 {
		return nil, nil
	}
	out := make([]policies.Grant, 0, len(members))
	for _, m := range members {
		g, err := parseMember(m)
		if err != nil {
			return nil, fmt.Errorf("active grants: %w", err)
		}
		out = append(out, g)
	}
	return out, nil
}

// activeMember encodes what Active returns: "id classes fingerprint",
// classes comma-separated; the fingerprint last, as it may hold spaces.
func activeMember(g Grant) string {
	names := make([]string, len(g.Classes))
	for i, c := range g.Classes {
		names[i] = c.String()
	}
	return g.ID + " " + strings.Join(names, ",") + " " + g.Fingerprint
}

func parseMember(m string) (policies.Grant, error) {
	id, rest, ok1 := strings.Cut(m, " ")
	classes, fp, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 {
		return policies.Grant{}, fmt.Errorf("corrupt active entry %q", m)
	}
	g := policies.Grant{ID: id, Fingerprint: fp}
	for name := range strings.SplitSeq(classes, ",") {
		if name == "" {
			continue
		}
		c, err := policies.ParseClass(name)
		if err != nil {
			return policies.Grant{}, fmt.Errorf("corrupt active entry %q: %w", m, err)
		}
		g.Classes = append(g.Classes, c)
	}
	return g, nil
}
