package sql

import (
	"container/list"
	"sync"
)

// cache is a bounded LRU of analyses keyed by query text. Agents repeat
// their statements, and an analysis costs a cgo parse and a fingerprint;
// a hit costs a map lookup under a mutex.
//
// Owner: the Analyzer; safe for concurrent use, mu guards everything.
type cache struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *entry, most recently used first
	byKey map[string]*list.Element
}

type entry struct {
	key string
	an  *Analysis
}

func newCache(max int) *cache {
	return &cache{max: max, order: list.New(), byKey: make(map[string]*list.Element)}
}

func (c *cache) get(key string) (*Analysis, bool) {
	if c.max <= 0 {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*entry).an, true
}

func (c *cache) put(key string, an *Analysis) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.order.MoveToFront(e)
		e.Value.(*entry).an = an
		return
	}
	c.byKey[key] = c.order.PushFront(&entry{key: key, an: an})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byKey, last.Value.(*entry).key)
	}
}

func (c *cache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
