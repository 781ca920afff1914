package httpapi

import (
	"testing"

	"github.com/sluicehq/sluice/policies"
)

func TestClassify(t *testing.T) {
	rules := []policies.HTTPRule{
		{Methods: []string{"GET"}, Path: "/v1/reports/*/export", Class: policies.ClassWrite},
		{Methods: []string{"GET", "HEAD"}, Path: "/v1/**", Class: policies.ClassRead},
		{Methods: []string{"*"}, Path: "/admin/**", Class: policies.ClassAdmin},
	}
	cases := []struct {
		method, path string
		headers      map[string]string
		want         policies.OperationClass
	}{
		{"GET", "/v1/contacts?limit=5", nil, policies.ClassRead},
		{"GET", "/v1/reports/42/export", nil, policies.ClassWrite},
		{"GET", "/v1", nil, policies.ClassRead},
		{"DELETE", "/admin/users/1", nil, policies.ClassAdmin},
		{"POST", "/v1/contacts", nil, policies.ClassWrite},
		{"GET", "/other", nil, policies.ClassRead},
		{"PATCH", "/other", nil, policies.ClassWrite},
		{"", "/", nil, policies.ClassUnknown},
		{"GET", "/v1/contacts", map[string]string{"upgrade": "websocket", "connection": "Upgrade"}, policies.ClassAdmin},
		{"POST", "/api/v1/namespaces/x/pods/p/exec", map[string]string{"connection": "keep-alive, Upgrade"}, policies.ClassAdmin},
	}
	for _, c := range cases {
		if got := Classify(c.method, c.path, c.headers, rules); got != c.want {
			t.Errorf("%s %s %v = %v, want %v", c.method, c.path, c.headers, got, c.want)
		}
	}
}

func TestPathMatches(t *testing.T) {
	cases := []struct {
		pattern, path string
		want          bool
	}{
		{"/v1/**", "/v1/a/b", true},
		{"/v1/**", "/v1", true},
		{"/v1/**", "/v2/a", false},
		{"/v1/*", "/v1/a", true},
		{"/v1/*", "/v1/a/b", false},
		{"/v1/*/x", "/v1/a/x", true},
		{"/", "/", true},
		{"/a", "/a/", true},
		{"/a", "/ab", false},
	}
	for _, c := range cases {
		if got := PathMatches(c.pattern, c.path); got != c.want {
			t.Errorf("PathMatches(%q, %q) = %v, want %v", c.pattern, c.path, got, c.want)
		}
	}
}
