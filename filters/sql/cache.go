package sql

import (
	"container/list"
	"sync"
)

// cache is a bounded LRU keyed by query text: of analyses by exact text,
// and of shapes by normalized text (shape.go). Agents repeat their
// statements, and an analysis costs a cgo parse; a hit costs a map lookup
// under a mutex.
//
// Owner: the Analyzer; safe for concurrent use, mu guards everything.
type cache[V any] struct {
	mu    sync.Mutex
	max   int
	order *list.List // of *entry, most recently used first
	byKey map[string]*list.Element
}

type entry[V any] struct {
	key string
	v   V
}

func newCache[V any](max int) *cache[V] {
	return &cache[V]{max: max, order: list.New(), byKey: make(map[string]*list.Element)}
}

func (c *cache[V]) get(key string) (V, bool) {
	var zero V
	if c.max <= 0 {
		return zero, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.byKey[key]
	if !ok {
		return zero, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*entry[V]).v, true
}

func (c *cache[V]) put(key string, v V) {
	if c.max <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.byKey[key]; ok {
		c.order.MoveToFront(e)
		e.Value.(*entry[V]).v = v
		return
	}
	c.byKey[key] = c.order.PushFront(&entry[V]{key: key, v: v})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.byKey, last.Value.(*entry[V]).key)
	}
}

func (c *cache[V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
