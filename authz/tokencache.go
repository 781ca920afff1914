package authz

import (
	"container/list"
	"crypto/sha256"
	"sync"
	"time"
)

// Token cache bounds.
const (
	// DefaultTokenCacheEntries bounds the verified-token cache; each entry
	// is a principal, a few hundred bytes.
	DefaultTokenCacheEntries = 10000
	// maxCacheAge re-verifies a long-lived token now and then, so a
	// rotated-out signing key stops being honoured within this time.
	maxCacheAge = 5 * time.Minute
)

// tokenCache remembers verified tokens by the SHA-256 of the token (the
// token itself is never kept), least recently used first out. An entry
// never outlives the token's expiry.
type tokenCache struct {
	max int

	mu    sync.Mutex
	items map[[sha256.Size]byte]*list.Element
	lru   list.List // front = most recent; values are *cacheEntry
}

type cacheEntry struct {
	key   [sha256.Size]byte
	v     Verified
	until time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, items: map[[sha256.Size]byte]*list.Element{}}
}

func (c *tokenCache) get(raw string, now time.Time) (Verified, bool) {
	if c.max <= 0 {
		return Verified{}, false
	}
	k := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.items[k]
	if !ok {
		return Verified{}, false
	}
	e := el.Value.(*cacheEntry)
	if !now.Before(e.until) {
		c.lru.Remove(el)
		delete(c.items, k)
		return Verified{}, false
	}
	c.lru.MoveToFront(el)
	return e.v, true
}

func (c *tokenCache) put(raw string, v Verified, now time.Time) {
	if c.max <= 0 {
		return
	}
	until := now.Add(maxCacheAge)
	if v.Expiry.Before(until) {
		until = v.Expiry
	}
	k := sha256.Sum256([]byte(raw))
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[k]; ok {
		el.Value = &cacheEntry{key: k, v: v, until: until}
		c.lru.MoveToFront(el)
		return
	}
	c.items[k] = c.lru.PushFront(&cacheEntry{key: k, v: v, until: until})
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*cacheEntry).key)
	}
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}
