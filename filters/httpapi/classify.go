package httpapi

import (
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Classify returns the operation class of an HTTP request. The first
// policy rule whose method and path pattern match decides; without one,
// safe methods (GET, HEAD, OPTIONS) read and every other method writes. A
// protocol upgrade (WebSocket, SPDY: how Kubernetes exec, attach and
// port-forward work) is admin whatever the rules say, because what flows
// after it cannot be inspected.
//
// headers has lower-case keys, as Envoy's CheckRequest sends them.
func Classify(method, path string, headers map[string]string, rules []policies.HTTPRule) policies.OperationClass {
	if IsUpgrade(headers) {
		return policies.ClassAdmin
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	for _, r := range rules {
		if methodMatches(r.Methods, method) && PathMatches(r.Path, path) {
			return r.Class
		}
	}
	switch method {
	case "GET", "HEAD", "OPTIONS":
		return policies.ClassRead
	case "":
		return policies.ClassUnknown
	}
	return policies.ClassWrite
}

// IsUpgrade reports whether the request asks to switch protocols.
func IsUpgrade(headers map[string]string) bool {
	if headers["upgrade"] != "" {
		return true
	}
	for _, tok := range strings.Split(headers["connection"], ",") {
		if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
			return true
		}
	}
	return false
}

func methodMatches(methods []string, m string) bool {
	if len(methods) == 0 {
		return true
	}
	for _, x := range methods {
		if x == "*" || x == m {
			return true
		}
	}
	return false
}

// PathMatches matches a path against a pattern of segments, where "*"
// matches one segment and a final "**" matches any number (including none).
func PathMatches(pattern, path string) bool {
	ps := strings.Split(strings.Trim(pattern, "/"), "/")
	xs := strings.Split(strings.Trim(path, "/"), "/")
	for i, p := range ps {
		if p == "**" && i == len(ps)-1 {
			return true
		}
		if i >= len(xs) || (p != "*" && p != xs[i]) {
			return false
		}
	}
	return len(ps) == len(xs)
}
