package extproc

import (
	"strings"
	"sync"
	"sync/atomic"

	"github.com/sluicehq/sluice/policies"
)

// perConfig caches what is compiled from the running config's masking
// rules, by rule names. A decision names its rules on every statement or
// request, so they are compiled once per config; a reload empties the
// cache, so earlier configs are not kept alive.
type perConfig[T any] struct {
	cfg atomic.Pointer[policies.Config]
	m   sync.Map // names joined by NUL → T
}

// get returns the value for names under cfg, building it on first use.
func (c *perConfig[T]) get(cfg *policies.Config, names []string, build func() (T, error)) (T, error) {
	if last := c.cfg.Swap(cfg); last != cfg {
		c.m.Clear()
	}
	key := strings.Join(names, "\x00")
	if v, ok := c.m.Load(key); ok {
		return v.(T), nil
	}
	v, err := build()
	if err != nil {
		return v, err
	}
	c.m.Store(key, v)
	return v, nil
}
