package httpapi

import (
	"reflect"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policies"
)

func TestParseJSONPath(t *testing.T) {
	name := func(s string) pathStep { return pathStep{kind: stepName, name: s} }
	index := func(i int) pathStep { return pathStep{kind: stepIndex, index: i} }
	anyStep := pathStep{kind: stepAny}
	cases := []struct {
		src  string
		want []pathStep
	}{
		{"$", nil},
		{"$.data", []pathStep{name("data")}},
		{"$.items[*].data", []pathStep{name("items"), anyStep, name("data")}},
		{"$.spec.containers[*].env[*].value", []pathStep{name("spec"), name("containers"), anyStep, name("env"), anyStep, name("value")}},
		{"$.items[0].x_1", []pathStep{name("items"), index(0), name("x_1")}},
		{"$.a[12]", []pathStep{name("a"), index(12)}},
		{"$.*.b", []pathStep{anyStep, name("b")}},
		{`$.metadata.annotations["app.kubernetes.io/name"]`, []pathStep{name("metadata"), name("annotations"), name("app.kubernetes.io/name")}},
		{`$['it\'s']`, []pathStep{name("it's")}},
		{`$["quote\"d"]`, []pathStep{name(`quote"d`)}},
		{`$['say "hi"']`, []pathStep{name(`say "hi"`)}},
		{`$["\u00e9"]`, []pathStep{name("é")}},
		{"$.é", []pathStep{name("é")}},
		{"$._x", []pathStep{name("_x")}},
	}
	for _, c := range cases {
		p, err := parseJSONPath(c.src)
		if err != nil {
			t.Errorf("%s: %v", c.src, err)
			continue
		}
		if !reflect.DeepEqual(p.steps, c.want) {
			t.Errorf("%s: steps %+v, want %+v", c.src, p.steps, c.want)
		}
	}
}

func TestParseJSONPathErrors(t *testing.T) {
	cases := []struct{ src, want string }{
		{"", "a path starts with $"},
		{"data", "a path starts with $"},
		{"$data", "expected . or [ after"},
		{"$.", "a name or * must follow ."},
		{"$..data", "descendant segments (..) are not supported"},
		{"$.a-b", `'-' cannot appear in a .name; write the name in brackets: ["a-b"]`},
		{"$.app.kubernetes.io/name", `'/' cannot appear in a .name; write the name in brackets: ["io/name"]`},
		{"$.1a", `'1' cannot appear in a .name`},
		{"$.a*", `'*' cannot appear in a .name`},
		{"$.items[", "unclosed ["},
		{"$.items[*", "expected ]"},
		{"$.items[-1]", "negative indexes are not supported"},
		{"$.items[0:2]", "unions and slices are not supported"},
		{"$.items[0,1]", "unions and slices are not supported"},
		{"$.items[?(@.x)]", "filter selectors are not supported"},
		{"$.items[01]", "no leading zeros"},
		{"$.items[99999999999999999999]", "index out of range"},
		{`$["open`, "unterminated quoted name"},
		{`$["bad\q"]`, "invalid quoted name"},
		{"$[x]", "expected *, an index or a quoted name"},
		{"$.a b", `' ' cannot appear in a .name`},
		{`$['it''s']`, "expected ]"}, // '' is not an escape
	}
	for _, c := range cases {
		_, err := parseJSONPath(c.src)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("parseJSONPath(%q) = %v, want an error containing %q", c.src, err, c.want)
		}
	}
}

func TestCompileJSONRules(t *testing.T) {
	all := []struct {
		name             string
		paths, detectors []string
	}{
		{"k8s", []string{"$.data"}, []string{"jwt"}},
		{"broken", []string{"$..x"}, nil},
	}
	var rules []policies.MaskingRule
	for _, a := range all {
		rules = append(rules, policies.MaskingRule{Name: a.name, JSONPaths: a.paths, Detectors: a.detectors})
	}
	r, err := CompileJSONRules(rules, []string{"k8s"})
	if err != nil || len(r.paths) != 1 || r.detectors.Empty() {
		t.Fatalf("CompileJSONRules(k8s) = %+v, %v", r, err)
	}
	if _, err := CompileJSONRules(rules, []string{"k8s", "broken"}); err == nil || !strings.Contains(err.Error(), `masking rule "broken"`) {
		t.Errorf("CompileJSONRules(broken) = %v, want an error naming the rule", err)
	}
	if _, err := NewJSONRules(nil, []string{"nope"}); err == nil || !strings.Contains(err.Error(), `unknown detector "nope"`) {
		t.Errorf("NewJSONRules(unknown detector) = %v", err)
	}
}

func TestAppendPathKey(t *testing.T) {
	for key, want := range map[string]string{
		"data":                    ".data",
		"app.kubernetes.io/name":  `["app.kubernetes.io/name"]`,
		"":                        `[""]`,
		"1a":                      `["1a"]`,
		`q"`:                      `["q\""]`,
		"é":                       ".é",
		"last-applied-config_uri": `["last-applied-config_uri"]`,
	} {
		got := string(appendPathKey(nil, []byte(key)))
		if got != want {
			t.Errorf("appendPathKey(%q) = %s, want %s", key, got, want)
		}
		// What the report writes, a rule can name.
		if p, err := parseJSONPath("$" + got); err != nil || p.steps[0].name != key {
			t.Errorf("parseJSONPath($%s) = %+v, %v; want the key %q back", got, p, err, key)
		}
	}
}
