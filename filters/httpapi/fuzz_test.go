package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/policies"
)

// FuzzParseKubernetes checks that any request target parses without
// panicking into something coherent: a known verb and class, a resource
// for resource requests, streams classed admin, and the trailing-slash
// invariance of requestinfo.go's splitPath.
func FuzzParseKubernetes(f *testing.F) {
	for _, s := range []struct{ method, target string }{
		{"GET", "/api/v1/namespaces/ns/pods/name/log"},
		{"PATCH", "/apis/apps/v1/namespaces/ns/deployments/name/scale"},
		{"GET", "/api/v1/watch/namespaces/ns/pods"},
		{"GET", "/api/v1/nodes/n/proxy/some/path"},
		{"GET", "/api/v1/proxy/namespaces/ns/services/s/x"},
		{"POST", "/api/v1/namespaces/ns/pods/p/exec?command=sh"},
		{"DELETE", "/api/v1/namespaces/ns/secrets?fieldSelector=metadata.name%3Ds"},
		{"GET", "/api/v1/pods?watch=1&fieldSelector=metadata.name%3D%3Dp,a%3Db"},
		{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles"},
		{"GET", "/api"}, {"GET", "/apis/apps"}, {"GET", "/healthz"}, {"HEAD", "/"},
		{"GET", "/api/v1//pods"}, {"GET", "/api/v1/namespaces/a%2Fb/pods"}, {"GET", "/api/v1/namespaces/%zz"},
		{"PUT", "/api/v1/namespaces/ns/finalize"}, {"OPTIONS", "/api/v1/pods"},
	} {
		f.Add(s.method, s.target)
	}
	f.Fuzz(func(t *testing.T, method, target string) {
		kr, ok := ParseKubernetes(method, target, nil)
		class := kr.Class()
		if !ok {
			return
		}
		if class != policies.ClassRead && class != policies.ClassWrite && class != policies.ClassAdmin {
			t.Fatalf("%s %q: class %v for a parsed request %+v", method, target, class, kr)
		}
		if kr.Verb == "" {
			t.Fatalf("%s %q: parsed without a verb: %+v", method, target, kr)
		}
		if kr.IsResource {
			if kr.Resource == "" || kr.Version == "" || !knownVerb(kr.Verb) {
				t.Fatalf("%s %q: incomplete resource request %+v", method, target, kr)
			}
			for _, part := range []string{kr.Namespace, kr.Resource, kr.Subresource, kr.Name} {
				if part == "." || part == ".." || strings.Contains(part, "/") {
					t.Fatalf("%s %q: segment %q in %+v", method, target, part, kr)
				}
			}
		}
		switch kr.Subresource {
		case "exec", "attach", "portforward", "proxy":
			if class != policies.ClassAdmin {
				t.Fatalf("%s %q: %s is %v", method, target, kr.Subresource, class)
			}
		}
		path, query, hasQuery := strings.Cut(target, "?")
		if strings.Contains(path, "#") {
			return
		}
		slashed := path + "/"
		if hasQuery {
			slashed += "?" + query
		}
		kr2, ok2 := ParseKubernetes(method, slashed, nil)
		kr2.Path = kr.Path
		if ok2 != ok || kr2 != kr {
			t.Fatalf("%s %q parses as %+v, with a trailing slash as %+v (%v)", method, target, kr, kr2, ok2)
		}
	})
}

func knownVerb(v KubeVerb) bool {
	switch v {
	case VerbGet, VerbList, VerbWatch, VerbCreate, VerbUpdate, VerbPatch, VerbDelete,
		VerbDeleteCollection, VerbExec, VerbAttach, VerbPortForward, VerbProxy:
		return true
	}
	return false
}

// fuzzRules exercise paths, wildcards and detectors together.
var fuzzRules = func() *JSONRules {
	r, err := NewJSONRules([]string{"$.a", "$.items[*].b", "$.*[0]", `$["x y"].*`}, []string{"email", "jwt", "credit_card"})
	if err != nil {
		panic(err)
	}
	return r
}()

func fuzzSeeds(f *testing.F) {
	list, _ := secretList(2)
	for _, s := range []string{
		`{"kind":"Secret","data":{"k":"dg=="},"stringData":{"s":"v"}}`,
		`{"data":{"k":"dg=="},"kind":"Secret"}`,
		`{"kind":"SecretList","items":[{"data":{"k":"dg=="}},{"metadata":{},"data":{"j":1}}]}`,
		`{"type":"ADDED","object":{"kind":"Secret","data":{"k":"dg=="}}}`,
		`{"kind":"Table","rows":[{"object":{"kind":"Secret","data":{"k":"x"}}}]}`,
		`{"kind":"Secret","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"kind\":\"Secret\",\"data\":{\"k\":\"dg==\"}}"}}}`,
		`{"a":{"b":[1,true,null,"s"]},"items":[{"b":"x"},{"c":"alice@example.com"}],"x y":{"z":-1e9}}`,
		`["\u0062ob@example.com","4111 1111 1111 1111",{"t":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"}]`,
		` "str\"ing\\" `, `0`, `null`, `{}`, `[]`, `{"a":"\ud800"}`, "{\"a\":\"\xff\"}",
		`{"a":1,}`, `{"a"`, ``, "{\"type\":\"ADDED\",\"object\":{}}\n{\"type\":\"DELETED\"}\n",
		string(list),
	} {
		f.Add([]byte(s), true, false)
		f.Add([]byte(s), false, true)
	}
	f.Add([]byte(watchStream), true, true)
}

// FuzzMask checks the masker against encoding/json: it errs exactly when
// json.Valid does, its output is valid JSON, it changes nothing when
// nothing applies, masking twice changes nothing more, and in a
// Kubernetes response no Secret's data value survives.
func FuzzMask(f *testing.F) {
	fuzzSeeds(f)
	f.Fuzz(func(t *testing.T, body []byte, kubernetes, secrets bool) {
		opt := JSONOptions{Kubernetes: kubernetes, Secrets: secrets}
		out, rep, err := fuzzRules.Mask(nil, body, opt)
		if (err == nil) != json.Valid(body) {
			t.Fatalf("Mask(%q) error %v, json.Valid %v", body, err, json.Valid(body))
		}
		if err != nil {
			if !errors.Is(err, ErrInvalidJSON) || out != nil {
				t.Fatalf("Mask(%q) = %q, %v", body, out, err)
			}
			return
		}
		if !json.Valid(out) {
			t.Fatalf("Mask(%q) = %q, not JSON", body, out)
		}
		if !rep.Masked() && !bytes.Equal(out, body) {
			t.Fatalf("Mask(%q) = %q with an empty report", body, out)
		}
		plain, _, _ := (*JSONRules)(nil).Mask(nil, body, JSONOptions{})
		if !bytes.Equal(plain, body) {
			t.Fatalf("no rules: Mask(%q) = %q", body, plain)
		}
		again, _, err := fuzzRules.Mask(nil, out, opt)
		if err != nil || !bytes.Equal(again, out) {
			t.Fatalf("masking %q twice: %q then %q (%v)", body, out, again, err)
		}
		if kubernetes && !hasDuplicateKeys(body) {
			dec := json.NewDecoder(bytes.NewReader(out))
			dec.UseNumber() // 1e700 is valid JSON, and no float64
			var v any
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			if leak := secretLeak(v); leak != "" {
				t.Fatalf("Mask(%q) = %q: Secret data value %q survived", body, out, leak)
			}
		}
	})
}

// secretLeak returns a data or stringData string value of a kind Secret
// object in v that is not a replacement.
func secretLeak(v any) string {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			if l := secretLeak(e); l != "" {
				return l
			}
		}
	case map[string]any:
		if v["kind"] == "Secret" {
			for _, field := range []string{"data", "stringData"} {
				if l := scalarLeak(v[field]); l != "" {
					return l
				}
			}
		}
		for _, e := range v {
			if l := secretLeak(e); l != "" {
				return l
			}
		}
	}
	return ""
}

func scalarLeak(v any) string {
	switch v := v.(type) {
	case string:
		if v != MaskedSecretData && v != MaskedString {
			return v
		}
	case []any:
		for _, e := range v {
			if l := scalarLeak(e); l != "" {
				return l
			}
		}
	case map[string]any:
		for _, e := range v {
			if l := scalarLeak(e); l != "" {
				return l
			}
		}
	case json.Number:
		if v != maskedNumber {
			return v.String()
		}
	case bool:
		if v {
			return "true"
		}
	}
	return ""
}

// hasDuplicateKeys reports an object with a key twice. encoding/json keeps
// the last; the masker reads the first kind. The API server never writes
// one (it serializes Go structs), so the leak oracle skips them.
func hasDuplicateKeys(b []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(b))
	var walk func() bool
	walk = func() bool {
		tok, err := dec.Token()
		if err != nil {
			return false
		}
		switch tok {
		case json.Delim('{'):
			seen := map[string]bool{}
			for dec.More() {
				k, _ := dec.Token()
				ks, _ := k.(string)
				if seen[ks] {
					return true
				}
				seen[ks] = true
				if walk() {
					return true
				}
			}
			_, _ = dec.Token()
		case json.Delim('['):
			for dec.More() {
				if walk() {
					return true
				}
			}
			_, _ = dec.Token()
		}
		return false
	}
	return walk()
}

// FuzzLineMasker checks that a stream masks the same however it is cut
// into chunks, and the same as its lines masked one by one.
func FuzzLineMasker(f *testing.F) {
	f.Add([]byte(watchStream), uint16(1), uint16(100))
	f.Add([]byte("{\"a\":1}\n\n{\"kind\":\"Secret\",\"data\":{\"k\":\"v\"}}"), uint16(3), uint16(9))
	f.Add([]byte("{}\r\n[1,\n2]\n"), uint16(0), uint16(0))
	f.Fuzz(func(t *testing.T, stream []byte, cut1, cut2 uint16) {
		const maxLine = 1 << 12
		want, wantErr := linesOneByOne(stream, maxLine)
		a, b := min(int(cut1), len(stream)), min(int(cut2), len(stream))
		if a > b {
			a, b = b, a
		}
		m := fuzzRules.NewLineMasker(kube, maxLine)
		var got []byte
		var err error
		for _, chunk := range [][]byte{stream[:a], stream[a:b], stream[b:]} {
			if got, err = m.Write(got, chunk); err != nil {
				break
			}
		}
		if err == nil {
			got, err = m.Close(got)
		}
		if (err == nil) != (wantErr == nil) {
			t.Fatalf("stream %q cut at %d,%d: error %v, line by line %v", stream, a, b, err, wantErr)
		}
		if err == nil && !bytes.Equal(got, want) {
			t.Fatalf("stream %q cut at %d,%d:\n got  %q\n want %q", stream, a, b, got, want)
		}
	})
}

// linesOneByOne masks each line of stream with Mask, as the line masker
// should.
func linesOneByOne(stream []byte, maxLine int) ([]byte, error) {
	var out []byte
	for len(stream) > 0 {
		line, rest, nl := bytes.Cut(stream, []byte("\n"))
		if len(line) > maxLine {
			return nil, ErrLineTooLong
		}
		if len(bytes.TrimLeft(line, " \t\r")) == 0 {
			out = append(out, line...)
		} else {
			var err error
			if out, _, err = fuzzRules.Mask(out, line, kube); err != nil {
				return nil, err
			}
		}
		if nl {
			out = append(out, '\n')
		}
		stream = rest
	}
	return out, nil
}
