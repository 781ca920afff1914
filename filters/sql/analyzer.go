package sql

import (
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Analyzer analyses SQL. It is safe for concurrent use; one Analyzer is
// shared by every session so that its cache serves them all.
type Analyzer struct {
	cache     *cache[*Analysis]
	shapes    *cache[shape] // by normalized text (shape.go)
	maxCached int
	// functions are the operator's own classifications, by "schema.name"
	// or bare "name"; they take precedence over the built-in tables.
	functions map[string]FunctionInfo
}

// Option configures an Analyzer.
type Option func(*Analyzer)

// Defaults for the analysis cache.
const (
	DefaultCacheSize = 4096
	// DefaultMaxCachedQuery is the longest query text kept in the cache:
	// the cache holds at most DefaultCacheSize of them, so memory stays
	// bounded; longer queries are analysed every time.
	DefaultMaxCachedQuery = 16 << 10
)

// WithCacheSize sets how many analyses are cached, and how many shapes
// (shape.go); 0 disables both caches.
func WithCacheSize(n int) Option {
	return func(a *Analyzer) { a.cache, a.shapes = newCache[*Analysis](n), newCache[shape](n) }
}

// WithMaxCachedQuery sets the longest query text that is cached, in bytes.
func WithMaxCachedQuery(n int) Option {
	return func(a *Analyzer) { a.maxCached = n }
}

// WithFunctions classifies functions the built-in tables do not know, or
// reclassifies ones they do: typically an operator declaring that a
// user-defined function is read-only and that its result derives from its
// arguments only. Keys are "schema.name" or "name" (any schema).
func WithFunctions(fns map[string]FunctionInfo) Option {
	return func(a *Analyzer) {
		for k, v := range fns {
			a.functions[k] = v
		}
	}
}

// New returns an Analyzer.
func New(opts ...Option) *Analyzer {
	a := &Analyzer{
		cache:     newCache[*Analysis](DefaultCacheSize),
		shapes:    newCache[shape](DefaultCacheSize),
		maxCached: DefaultMaxCachedQuery,
		functions: map[string]FunctionInfo{},
	}
	for _, o := range opts {
		o(a)
	}
	return a
}

// FunctionInfo is what sluice knows about a function.
type FunctionInfo struct {
	// Class is the class a call adds to its statement.
	Class policies.OperationClass
	// Opaque means the result may carry data that does not come from the
	// arguments (it reads tables, files or another server by name), so its
	// lineage is unknown.
	Opaque bool
}

// unknownFunction is the classification of a function neither table
// knows: most likely user-defined, with whatever side effects its body has.
// Write keeps it away from read-only agents without making every custom
// function an admin operation (doc.go explains the choice).
var unknownFunction = FunctionInfo{Class: policies.ClassWrite, Opaque: true}

// lookupFunction classifies the function schema.name ("" schema when the
// call is unqualified).
func (a *Analyzer) lookupFunction(schema, name string) FunctionInfo {
	if fi, ok := a.override(schema, name); ok {
		return fi
	}
	builtinSchema := schema == "" || schema == "pg_catalog"
	if fi, ok := knownFunctions[name]; ok {
		// An entry more dangerous than read also applies in any other
		// schema: extensions (dblink, adminpack) install anywhere, and
		// over-classifying a same-named user function fails closed.
		if builtinSchema || fi.Class > policies.ClassRead {
			return fi
		}
		return unknownFunction
	}
	for _, p := range knownPrefixes {
		if strings.HasPrefix(name, p.prefix) && (builtinSchema || p.info.Class > policies.ClassRead) {
			return p.info
		}
	}
	if builtinSchema {
		if _, ok := pureBuiltins[name]; ok {
			return FunctionInfo{Class: policies.ClassRead}
		}
	}
	return unknownFunction
}

// override returns the operator's classification of schema.name, if any.
func (a *Analyzer) override(schema, name string) (FunctionInfo, bool) {
	if len(a.functions) == 0 {
		return FunctionInfo{}, false
	}
	if schema != "" {
		if fi, ok := a.functions[schema+"."+name]; ok {
			return fi, true
		}
	}
	fi, ok := a.functions[name]
	return fi, ok
}
