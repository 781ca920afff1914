package postgres

import "sync"

// BackendKey is the cancel key a server gives a session (BackendKeyData).
type BackendKey struct {
	ProcessID uint32
	// Secret is the key's bytes (4 before protocol 3.2, up to 256 after).
	Secret string
}

// CancelKeys says whether a CancelRequest's key belongs to a session
// sluice authenticated on the target.
type CancelKeys interface {
	Known(target string, k BackendKey) bool
}

// KeyRegistry is an in-memory CancelKeys: the keys of live authenticated
// sessions, per target. It is safe for concurrent use.
type KeyRegistry struct {
	mu   sync.Mutex
	keys map[string]map[BackendKey]int
}

var _ CancelKeys = (*KeyRegistry)(nil)

// NewKeyRegistry returns an empty registry.
func NewKeyRegistry() *KeyRegistry { return &KeyRegistry{keys: map[string]map[BackendKey]int{}} }

// Add records a live session's key.
func (r *KeyRegistry) Add(target string, k BackendKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.keys[target]
	if m == nil {
		m = map[BackendKey]int{}
		r.keys[target] = m
	}
	m[k]++
}

// Remove forgets a key when its session ends.
func (r *KeyRegistry) Remove(target string, k BackendKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.keys[target]
	if m[k] <= 1 {
		delete(m, k)
	} else {
		m[k]--
	}
	if len(m) == 0 {
		delete(r.keys, target)
	}
}

// Known implements CancelKeys.
func (r *KeyRegistry) Known(target string, k BackendKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.keys[target][k] > 0
}
