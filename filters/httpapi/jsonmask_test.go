package httpapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func mustRules(t testing.TB, paths, detectors []string) *JSONRules {
	t.Helper()
	r, err := NewJSONRules(paths, detectors)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

var (
	kube        = JSONOptions{Kubernetes: true}
	kubeSecrets = JSONOptions{Kubernetes: true, Secrets: true}
)

func TestMaskKubernetesSecrets(t *testing.T) {
	cases := []struct {
		name    string
		opt     JSONOptions
		in      string
		want    string
		secrets int
		paths   []string
	}{
		{"a Secret: data and stringData values, keys kept", kube,
			`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db"},"data":{"password":"aHVudGVyMg==","user":"YWRtaW4="},"stringData":{"token":"abc"},"type":"Opaque"}`,
			`{"kind":"Secret","apiVersion":"v1","metadata":{"name":"db"},"data":{"password":"W21hc2tlZF0=","user":"W21hc2tlZF0="},"stringData":{"token":"[masked]"},"type":"Opaque"}`,
			1, []string{"$.data", "$.stringData"}},
		{"data before kind", kube,
			`{"data":{"k":"dg=="},"metadata":{},"kind":"Secret"}`,
			`{"data":{"k":"W21hc2tlZF0="},"metadata":{},"kind":"Secret"}`,
			1, []string{"$.data"}},
		{"whitespace and layout kept", kube,
			"\n{ \"kind\" : \"Secret\",\n  \"data\" : { \"k\" : \"dg==\" , \"j\":\"dw==\" }\n}\n",
			"\n{ \"kind\" : \"Secret\",\n  \"data\" : { \"k\" : \"W21hc2tlZF0=\" , \"j\":\"W21hc2tlZF0=\" }\n}\n",
			1, []string{"$.data"}},
		{"non-string data values keep their type", kube,
			`{"kind":"Secret","data":{"a":5,"b":true,"c":null,"d":{"e":"x"},"f":["y"]}}`,
			`{"kind":"Secret","data":{"a":0,"b":false,"c":null,"d":{"e":"W21hc2tlZF0="},"f":["W21hc2tlZF0="]}}`,
			1, []string{"$.data"}},
		{"a SecretList's items name no kind", kube,
			`{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"},"data":{"k":"dg=="}},{"metadata":{"name":"b"},"type":"Opaque","data":{"k":"dw=="}}]}`,
			`{"kind":"SecretList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a"},"data":{"k":"W21hc2tlZF0="}},{"metadata":{"name":"b"},"type":"Opaque","data":{"k":"W21hc2tlZF0="}}]}`,
			2, []string{"$.items[*].data"}},
		{"a SecretList whose kind comes last", kube,
			`{"items":[{"data":{"k":"dg=="}}],"kind":"SecretList"}`,
			`{"items":[{"data":{"k":"W21hc2tlZF0="}}],"kind":"SecretList"}`,
			1, []string{"$.items[*].data"}},
		{"a List mixing kinds", kube,
			`{"kind":"List","items":[{"kind":"ConfigMap","data":{"k":"v"}},{"kind":"Secret","data":{"k":"dg=="}}]}`,
			`{"kind":"List","items":[{"kind":"ConfigMap","data":{"k":"v"}},{"kind":"Secret","data":{"k":"W21hc2tlZF0="}}]}`,
			1, []string{"$.items[*].data"}},
		{"a watch event", kube,
			`{"type":"MODIFIED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"a"},"data":{"k":"dg=="}}}`,
			`{"type":"MODIFIED","object":{"kind":"Secret","apiVersion":"v1","metadata":{"name":"a"},"data":{"k":"W21hc2tlZF0="}}}`,
			1, []string{"$.object.data"}},
		{"a Table row's object", kube,
			`{"kind":"Table","apiVersion":"meta.k8s.io/v1","columnDefinitions":[],"rows":[{"cells":["a"],"object":{"kind":"Secret","data":{"k":"dg=="}}}]}`,
			`{"kind":"Table","apiVersion":"meta.k8s.io/v1","columnDefinitions":[],"rows":[{"cells":["a"],"object":{"kind":"Secret","data":{"k":"W21hc2tlZF0="}}}]}`,
			1, []string{"$.rows[*].object.data"}},
		{"a Secret nested anywhere", kube,
			`{"kind":"Thing","spec":{"template":{"kind":"Secret","stringData":{"k":"v"}}}}`,
			`{"kind":"Thing","spec":{"template":{"kind":"Secret","stringData":{"k":"[masked]"}}}}`,
			1, []string{"$.spec.template.stringData"}},
		{"a request for secrets: no kind anywhere", kubeSecrets,
			`{"items":[{"data":{"k":"dg=="}}]}`,
			`{"items":[{"data":{"k":"W21hc2tlZF0="}}]}`,
			1, []string{"$.items[*].data"}},
		{"a request for secrets: one object, no kind", kubeSecrets,
			`{"metadata":{"name":"a"},"data":{"k":"dg=="}}`,
			`{"metadata":{"name":"a"},"data":{"k":"W21hc2tlZF0="}}`,
			1, []string{"$.data"}},
		{"a request for secrets: a watch event, no kind", kubeSecrets,
			`{"type":"ADDED","object":{"data":{"k":"dg=="}}}`,
			`{"type":"ADDED","object":{"data":{"k":"W21hc2tlZF0="}}}`,
			1, []string{"$.object.data"}},
		{"a request for secrets answered by a Status", kubeSecrets,
			`{"kind":"Status","apiVersion":"v1","status":"Failure","details":{"name":"a","kind":"secrets"},"data":{"k":"v"},"code":404}`,
			`{"kind":"Status","apiVersion":"v1","status":"Failure","details":{"name":"a","kind":"secrets"},"data":{"k":"v"},"code":404}`,
			0, nil},
		{"a ConfigMap is not a Secret", kube,
			`{"kind":"ConfigMap","data":{"k":"v"}}`,
			`{"kind":"ConfigMap","data":{"k":"v"}}`,
			0, nil},
		{"kind as an escaped string", kube,
			`{"kind":"S\u0065cret","data":{"k":"dg=="}}`,
			`{"kind":"S\u0065cret","data":{"k":"W21hc2tlZF0="}}`,
			1, []string{"$.data"}},
		{"an escaped data key", kube,
			`{"kind":"Secret","d\u0061ta":{"k":"dg=="}}`,
			`{"kind":"Secret","d\u0061ta":{"k":"W21hc2tlZF0="}}`,
			1, []string{"$.data"}},
		{"an empty Secret", kube,
			`{"kind":"Secret","data":{},"stringData":null}`,
			`{"kind":"Secret","data":{},"stringData":null}`,
			1, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, rep, err := (*JSONRules)(nil).Mask(nil, []byte(c.in), c.opt)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
			if rep.Secrets != c.secrets || !slices.Equal(rep.Paths, c.paths) {
				t.Errorf("report %+v, want %d secrets at %v", rep, c.secrets, c.paths)
			}
			if !json.Valid(got) {
				t.Errorf("output is not JSON: %s", got)
			}
		})
	}
}

func TestMaskSecretsOnlyForKubernetes(t *testing.T) {
	in := `{"kind":"Secret","data":{"k":"dg=="}}`
	got, rep, err := (*JSONRules)(nil).Mask(nil, []byte(in), JSONOptions{})
	if err != nil || string(got) != in || rep.Masked() {
		t.Errorf("a plain HTTP API's kind means nothing: got %s, %+v, %v", got, rep, err)
	}
}

// kubectl apply keeps the whole object it sent in an annotation: for a
// Secret, its data in clear. It is masked as a Secret, and stays JSON
// kubectl can diff against.
func TestMaskLastAppliedConfiguration(t *testing.T) {
	applied := `{"apiVersion":"v1","data":{"password":"aHVudGVyMg=="},"kind":"Secret","metadata":{"name":"db"},"stringData":{"pin":"1234"}}` + "\n"
	doc, _ := json.Marshal(map[string]any{
		"kind":     "Secret",
		"metadata": map[string]any{"name": "db", "annotations": map[string]string{lastAppliedAnnotation: applied, "other": "aHVudGVyMg=="}},
		"data":     map[string]string{"password": "aHVudGVyMg=="},
	})
	got, rep, err := (*JSONRules)(nil).Mask(nil, doc, kube)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Metadata struct{ Annotations map[string]string }
	}
	if err := json.Unmarshal(got, &out); err != nil {
		t.Fatal(err)
	}
	wantApplied := `{"apiVersion":"v1","data":{"password":"W21hc2tlZF0="},"kind":"Secret","metadata":{"name":"db"},"stringData":{"pin":"[masked]"}}` + "\n"
	if a := out.Metadata.Annotations[lastAppliedAnnotation]; a != wantApplied {
		t.Errorf("last-applied = %q\nwant %q", a, wantApplied)
	}
	if o := out.Metadata.Annotations["other"]; o != "aHVudGVyMg==" {
		t.Errorf("another annotation was touched: %q", o)
	}
	if !slices.Contains(rep.Paths, `$.metadata.annotations["kubectl.kubernetes.io/last-applied-configuration"]`) {
		t.Errorf("report paths %v", rep.Paths)
	}

	// Another object's annotation is masked by the paths that mask the
	// object, and only when some rule could apply.
	cm := []byte(`{"kind":"ConfigMap","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"v\"}}"}},"data":{"k":"v"}}`)
	got, _, err = mustRules(t, []string{"$.data"}, nil).Mask(nil, cm, kube)
	wantCM := `{"kind":"ConfigMap","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"kind\":\"ConfigMap\",\"data\":{\"k\":\"[masked]\"}}"}},"data":{"k":"[masked]"}}`
	if err != nil || string(got) != wantCM {
		t.Errorf("ConfigMap:\n got  %s\n want %s (%v)", got, wantCM, err)
	}
	if got, _, err = (*JSONRules)(nil).Mask(nil, cm, kube); err != nil || string(got) != string(cm) {
		t.Errorf("ConfigMap without rules: %s, %v", got, err)
	}
	notJSON := []byte(`{"kind":"ConfigMap","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"mail bob@example.com"}}}`)
	got, _, err = mustRules(t, []string{"$.data"}, []string{"email"}).Mask(nil, notJSON, kube)
	if err != nil || !strings.Contains(string(got), `"mail xxx@xxxxxxx.xxx"`) {
		t.Errorf("a ConfigMap's annotation that is not JSON is still scanned: %s, %v", got, err)
	}

	// A Secret's that is not JSON: replaced whole.
	doc = []byte(`{"kind":"Secret","metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"password=hunter2"}}}`)
	got, _, err = (*JSONRules)(nil).Mask(nil, doc, kube)
	if err != nil || !strings.Contains(string(got), `"kubectl.kubernetes.io/last-applied-configuration":"[masked]"`) {
		t.Errorf("got %s, %v", got, err)
	}
}

func TestMaskPaths(t *testing.T) {
	cases := []struct {
		name  string
		paths []string
		opt   JSONOptions
		in    string
		want  string
		rep   []string
	}{
		{"a string", []string{"$.a"}, JSONOptions{},
			`{"a":"secret","b":"kept"}`, `{"a":"[masked]","b":"kept"}`, []string{"$.a"}},
		{"scalars keep their type; null stays null", []string{"$.*"}, JSONOptions{},
			`{"s":"x","n":-1.5e3,"t":true,"f":false,"z":null}`, `{"s":"[masked]","n":0,"t":false,"f":false,"z":null}`, []string{"$.s", "$.n", "$.t", "$.f"}},
		{"an object keeps its keys", []string{"$.o"}, JSONOptions{},
			`{"o":{"a":"x","b":{"c":1},"d":[true,"y"]}}`, `{"o":{"a":"[masked]","b":{"c":0},"d":[false,"[masked]"]}}`, []string{"$.o"}},
		{"wildcards through arrays", []string{"$.spec.containers[*].env[*].value"}, JSONOptions{},
			`{"spec":{"containers":[{"env":[{"name":"A","value":"1"},{"name":"B"}]},{"env":[{"name":"C","value":"3"}]}]}}`,
			`{"spec":{"containers":[{"env":[{"name":"A","value":"[masked]"},{"name":"B"}]},{"env":[{"name":"C","value":"[masked]"}]}]}}`,
			[]string{"$.spec.containers[*].env[*].value"}},
		{"an index", []string{"$.a[1]"}, JSONOptions{},
			`{"a":["x","y","z"]}`, `{"a":["x","[masked]","z"]}`, []string{"$.a[*]"}},
		{"an index does not select a member", []string{"$.a[0]"}, JSONOptions{},
			`{"a":{"0":"x"}}`, `{"a":{"0":"x"}}`, nil},
		{"a name does not select an element", []string{"$.a.x"}, JSONOptions{},
			`{"a":[{"x":"y"}]}`, `{"a":[{"x":"y"}]}`, nil},
		{"[*] selects members too", []string{"$.data[*]"}, JSONOptions{},
			`{"data":{"a":"x","b":"y"}}`, `{"data":{"a":"[masked]","b":"[masked]"}}`, []string{"$.data.a", "$.data.b"}},
		{"a bracketed name", []string{`$.metadata.annotations["example.com/token"]`}, JSONOptions{},
			`{"metadata":{"annotations":{"example.com/token":"t","example.com/other":"o"}}}`,
			`{"metadata":{"annotations":{"example.com/token":"[masked]","example.com/other":"o"}}}`,
			[]string{`$.metadata.annotations["example.com/token"]`}},
		{"the whole document", []string{"$"}, JSONOptions{},
			`[{"a":1},"b"]`, `[{"a":0},"[masked]"]`, []string{"$"}},
		{"a top-level scalar", []string{"$"}, JSONOptions{},
			` "x" `, ` "[masked]" `, []string{"$"}},
		{"a path through a scalar selects nothing", []string{"$.a.b"}, JSONOptions{},
			`{"a":"b"}`, `{"a":"b"}`, nil},
		{"overlapping paths mask once", []string{"$.a", "$.a.b", "$.*"}, JSONOptions{},
			`{"a":{"b":"x"}}`, `{"a":{"b":"[masked]"}}`, []string{"$.a"}},
		{"Kubernetes: paths apply to each List item", []string{"$.data"}, kube,
			`{"kind":"ConfigMapList","items":[{"data":{"k":"v"}},{"data":{"k":"w"}}],"data":"top"}`,
			`{"kind":"ConfigMapList","items":[{"data":{"k":"[masked]"}},{"data":{"k":"[masked]"}}],"data":"[masked]"}`,
			[]string{"$.items[*].data", "$.data"}},
		{"Kubernetes: and to each watch event's object", []string{"$.data"}, kube,
			`{"type":"ADDED","object":{"kind":"ConfigMap","data":{"k":"v"}}}`,
			`{"type":"ADDED","object":{"kind":"ConfigMap","data":{"k":"[masked]"}}}`,
			[]string{"$.object.data"}},
		{"Kubernetes: rooted paths still apply", []string{"$.items[*].data"}, kube,
			`{"kind":"ConfigMapList","items":[{"data":{"k":"v"}}]}`,
			`{"kind":"ConfigMapList","items":[{"data":{"k":"[masked]"}}]}`,
			[]string{"$.items[*].data"}},
		{"not Kubernetes: items are not rooted", []string{"$.data"}, JSONOptions{},
			`{"items":[{"data":"v"}]}`, `{"items":[{"data":"v"}]}`, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, rep, err := mustRules(t, c.paths, nil).Mask(nil, []byte(c.in), c.opt)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
			if !slices.Equal(rep.Paths, c.rep) || rep.Masked() != (c.rep != nil) {
				t.Errorf("report %+v, want paths %v", rep, c.rep)
			}
		})
	}
}

func TestMaskDetectors(t *testing.T) {
	r := mustRules(t, nil, []string{"email", "jwt", "credit_card"})
	cases := []struct{ in, want string }{
		{`{"note":"mail alice@example.com now","n":4111111111111111}`, `{"note":"mail xxxxx@xxxxxxx.xxx now","n":4111111111111111}`},
		{`["4111 1111 1111 1111"]`, `["0000 0000 0000 0000"]`},
		// Escapes are decoded before detectors look, and written back valid.
		{`{"a":"\u0061lice@example.com\n"}`, `{"a":"xxxxx@xxxxxxx.xxx\n"}`},
		{`{"a":"<b>bob@example.com</b> \"q\""}`, `{"a":"<b>xxx@xxxxxxx.xxx</b> \"q\""}`},
		// Keys are neither scanned nor masked.
		{`{"alice@example.com":"x"}`, `{"alice@example.com":"x"}`},
		{`{"t":"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"}`, `{"t":"Bearer xxxxxxxxxxxxxxx0xxx0.xxxxxxxxxxxxxx0.xxx"}`},
	}
	for _, c := range cases {
		got, rep, err := r.Mask(nil, []byte(c.in), JSONOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("Mask(%s)\n got  %s\n want %s", c.in, got, c.want)
		}
		if rep.Masked() != (c.in != c.want) {
			t.Errorf("Mask(%s): report %+v", c.in, rep)
		}
	}
	_, rep, _ := r.Mask(nil, []byte(`{"a":["bob@example.com"],"b":{"c":"x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"}}`), JSONOptions{})
	want := Report{Values: 2, Paths: []string{"$.a[*]", "$.b.c"}, Detectors: []string{"email", "jwt"}}
	if !reflect.DeepEqual(rep, want) {
		t.Errorf("report %+v, want %+v", rep, want)
	}
}

func TestMaskLeavesUnmatchedBytesAlone(t *testing.T) {
	r := mustRules(t, []string{"$.nothing.here"}, []string{"email", "us_ssn"})
	in := " {\"kind\":\"Pod\",\n\t\"a\" : [1, 2.5e-3, true, null, \"\\u00e9\\n\", {}],\r\n \"b\":{\"c\":\"\\\"quoted\\\\\"}} \n"
	got, rep, err := r.Mask([]byte("prefix:"), []byte(in), kube)
	if err != nil || string(got) != "prefix:"+in || rep.Masked() {
		t.Errorf("got %q, %+v, %v", got, rep, err)
	}
}

func TestMaskInvalidJSON(t *testing.T) {
	for _, in := range []string{
		``, ` `, `{`, `{"a":}`, `{"a":1}{"b":2}`, `{"a":1} x`, `{'a':1}`, `[1,]`, "\"\x01\"", `{"kind":"Secret","data":{"k":"v"}`,
	} {
		dst := []byte("kept")
		got, rep, err := (*JSONRules)(nil).Mask(dst, []byte(in), kube)
		if !errors.Is(err, ErrInvalidJSON) {
			t.Errorf("Mask(%q) error = %v, want ErrInvalidJSON", in, err)
		}
		if string(got) != "kept" || rep.Masked() {
			t.Errorf("Mask(%q) appended %q, report %+v", in, got, rep)
		}
	}
	_, _, err := (*JSONRules)(nil).Mask(nil, []byte(`{"a":1,}`), kube)
	if err == nil || !strings.Contains(err.Error(), "at byte 8 of 8") {
		t.Errorf("error %v does not say where", err)
	}
}

func TestReportPathsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 100 {
		fmt.Fprintf(&b, `"k%d":"x",`, i)
	}
	b.WriteString(`"end":1}`)
	_, rep, err := mustRules(t, []string{"$.*"}, nil).Mask(nil, []byte(b.String()), JSONOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Paths) != maxReportPaths || !rep.Truncated || rep.Values != 101 {
		t.Errorf("%d paths, truncated %v, %d values", len(rep.Paths), rep.Truncated, rep.Values)
	}
}

// secretList builds a SecretList response whose values are seeded
// secrets, as the API server writes one (items without kind), plus the
// seeds, in clear and in base64.
func secretList(n int) (body []byte, seeds []string) {
	type item struct {
		Metadata   map[string]any    `json:"metadata"`
		Type       string            `json:"type"`
		Data       map[string]string `json:"data"`
		StringData map[string]string `json:"stringData,omitempty"`
	}
	list := struct {
		Kind       string         `json:"kind"`
		APIVersion string         `json:"apiVersion"`
		Metadata   map[string]any `json:"metadata"`
		Items      []item         `json:"items"`
	}{Kind: "SecretList", APIVersion: "v1", Metadata: map[string]any{"resourceVersion": "12345"}}
	for i := range n {
		pw := fmt.Sprintf("s3cr3t-password-%04d", i)
		tok := fmt.Sprintf("tok-%04d-%x", i, i*7919)
		seeds = append(seeds, pw, tok, base64.StdEncoding.EncodeToString([]byte(pw)), base64.StdEncoding.EncodeToString([]byte(tok)))
		applied, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Secret", "data": map[string]string{"password": base64.StdEncoding.EncodeToString([]byte(pw))}})
		list.Items = append(list.Items, item{
			Metadata: map[string]any{
				"name": fmt.Sprintf("secret-%d", i), "namespace": "prod", "uid": fmt.Sprintf("6f1c2a4e-0000-4000-8000-%012d", i),
				"resourceVersion": fmt.Sprint(1000 + i), "creationTimestamp": "2026-01-02T03:04:05Z",
				"labels":      map[string]string{"app": "db", "tier": "backend"},
				"annotations": map[string]string{lastAppliedAnnotation: string(applied)},
			},
			Type:       "Opaque",
			Data:       map[string]string{"password": base64.StdEncoding.EncodeToString([]byte(pw)), "token": base64.StdEncoding.EncodeToString([]byte(tok))},
			StringData: map[string]string{"token": tok},
		})
	}
	body, _ = json.Marshal(list)
	return body, seeds
}

func TestNoSeededSecretSurvives(t *testing.T) {
	body, seeds := secretList(50)
	for _, opt := range []JSONOptions{kube, kubeSecrets} {
		got, rep, err := (*JSONRules)(nil).Mask(nil, body, opt)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range seeds {
			if strings.Contains(string(got), s) {
				t.Fatalf("seed %q survived masking", s)
			}
		}
		if rep.Secrets != 50 || !json.Valid(got) {
			t.Errorf("report %+v, valid %v", rep, json.Valid(got))
		}
		// Everything that is not a secret value is still there.
		var out struct {
			Items []struct {
				Metadata struct{ Name string }
				Data     map[string]string
			}
		}
		if err := json.Unmarshal(got, &out); err != nil || len(out.Items) != 50 || out.Items[7].Metadata.Name != "secret-7" || out.Items[7].Data["password"] != MaskedSecretData {
			t.Errorf("masked list decodes as %+v, %v", out.Items[7], err)
		}
	}
}
