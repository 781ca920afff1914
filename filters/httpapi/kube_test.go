package httpapi

import (
	"testing"

	"github.com/sluicehq/sluice/policies"
)

// The expectations follow RequestInfoFactory.NewRequestInfo
// (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go) and its test
// table, with sluice's verbs for the streaming subresources.
func TestParseKubernetes(t *testing.T) {
	type want struct {
		ok                                                     bool
		res                                                    bool
		verb                                                   KubeVerb
		group, version, namespace, resource, subresource, name string
		class                                                  policies.OperationClass
	}
	const (
		read    = policies.ClassRead
		write   = policies.ClassWrite
		admin   = policies.ClassAdmin
		unknown = policies.ClassUnknown
	)
	cases := []struct {
		method, target string
		headers        map[string]string
		want           want
	}{
		// Collections and objects, core group.
		{"GET", "/api/v1/pods", nil, want{true, true, VerbList, "", "v1", "", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "", "p", read}},
		{"HEAD", "/api/v1/namespaces/ns/pods/p", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "", "p", read}},
		{"POST", "/api/v1/namespaces/ns/pods", nil, want{true, true, VerbCreate, "", "v1", "ns", "pods", "", "", write}},
		{"PUT", "/api/v1/namespaces/ns/pods/p", nil, want{true, true, VerbUpdate, "", "v1", "ns", "pods", "", "p", write}},
		{"PATCH", "/api/v1/namespaces/ns/pods/p", nil, want{true, true, VerbPatch, "", "v1", "ns", "pods", "", "p", write}},
		{"DELETE", "/api/v1/namespaces/ns/pods/p", nil, want{true, true, VerbDelete, "", "v1", "ns", "pods", "", "p", write}},
		{"DELETE", "/api/v1/namespaces/ns/pods", nil, want{true, true, VerbDeleteCollection, "", "v1", "ns", "pods", "", "", write}},
		{"DELETE", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%3Dp", nil, want{true, true, VerbDeleteCollection, "", "v1", "ns", "pods", "", "", write}},
		{"GET", "/api/v1/nodes/n1", nil, want{true, true, VerbGet, "", "v1", "", "nodes", "", "n1", read}},
		// Secrets are read like anything else; masking hides their values.
		{"GET", "/api/v1/namespaces/ns/secrets/s", nil, want{true, true, VerbGet, "", "v1", "ns", "secrets", "", "s", read}},
		// Namespaces themselves, and their subresources.
		{"GET", "/api/v1/namespaces", nil, want{true, true, VerbList, "", "v1", "", "namespaces", "", "", read}},
		{"GET", "/api/v1/namespaces/ns", nil, want{true, true, VerbGet, "", "v1", "ns", "namespaces", "", "ns", read}},
		{"DELETE", "/api/v1/namespaces/ns", nil, want{true, true, VerbDelete, "", "v1", "ns", "namespaces", "", "ns", write}},
		{"PUT", "/api/v1/namespaces/ns/status", nil, want{true, true, VerbUpdate, "", "v1", "ns", "namespaces", "status", "ns", write}},
		{"PUT", "/api/v1/namespaces/ns/finalize", nil, want{true, true, VerbUpdate, "", "v1", "ns", "namespaces", "finalize", "ns", write}},
		// Named groups and subresources.
		{"GET", "/apis/apps/v1/namespaces/ns/deployments/d/scale", nil, want{true, true, VerbGet, "apps", "v1", "ns", "deployments", "scale", "d", read}},
		{"PATCH", "/apis/apps/v1/namespaces/ns/deployments/d/scale", nil, want{true, true, VerbPatch, "apps", "v1", "ns", "deployments", "scale", "d", write}},
		{"PUT", "/apis/apps/v1/namespaces/ns/deployments/d/status", nil, want{true, true, VerbUpdate, "apps", "v1", "ns", "deployments", "status", "d", write}},
		{"GET", "/apis/apps/v1/deployments", nil, want{true, true, VerbList, "apps", "v1", "", "deployments", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p/log", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "log", "p", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p/log?follow=true&container=c", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "log", "p", read}},
		{"GET", "/apis/stable.example.com/v1/namespaces/ns/crontabs/c", nil, want{true, true, VerbGet, "stable.example.com", "v1", "ns", "crontabs", "", "c", read}},
		// Watches: the query parameter, Convert_Slice_string_To_bool's
		// truth, the legacy prefix, and a watch of one object by name.
		{"GET", "/api/v1/namespaces/ns/pods?watch=true", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods?watch=1&resourceVersion=10", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods?watch=", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods?watch=False", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods?watch=0&watch=1", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p?watch=true", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "", "p", read}},
		{"GET", "/api/v1/namespaces/ns/pods?watch=true&fieldSelector=metadata.name%3Dp", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "p", read}},
		{"GET", "/api/v1/namespaces/ns/pods?fieldSelector=status.phase%3DRunning,metadata.name%3D%3Dp", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "p", read}},
		{"GET", "/api/v1/namespaces/ns/pods?fieldSelector=metadata.name%21%3Dp", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/watch/namespaces/ns/pods", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/watch/namespaces/ns/pods/p", nil, want{true, true, VerbWatch, "", "v1", "ns", "pods", "", "p", read}},
		{"GET", "/api/v1/watch/pods", nil, want{true, true, VerbWatch, "", "v1", "", "pods", "", "", read}},
		{"GET", "/apis/apps/v1/watch/namespaces/ns/deployments", nil, want{true, true, VerbWatch, "apps", "v1", "ns", "deployments", "", "", read}},
		{"GET", "/api/v1/watch/namespaces", nil, want{true, true, VerbWatch, "", "v1", "", "namespaces", "", "", read}},
		// Streams into workloads, whatever the method.
		{"POST", "/api/v1/namespaces/ns/pods/p/exec?command=sh&stdin=true", nil, want{true, true, VerbExec, "", "v1", "ns", "pods", "exec", "p", admin}},
		{"GET", "/api/v1/namespaces/ns/pods/p/exec?command=sh", nil, want{true, true, VerbExec, "", "v1", "ns", "pods", "exec", "p", admin}},
		{"POST", "/api/v1/namespaces/ns/pods/p/attach", nil, want{true, true, VerbAttach, "", "v1", "ns", "pods", "attach", "p", admin}},
		{"POST", "/api/v1/namespaces/ns/pods/p/portforward", nil, want{true, true, VerbPortForward, "", "v1", "ns", "pods", "portforward", "p", admin}},
		{"GET", "/api/v1/nodes/n/proxy/some/path", nil, want{true, true, VerbProxy, "", "v1", "", "nodes", "proxy", "n", admin}},
		{"GET", "/api/v1/namespaces/ns/services/s:http/proxy/", nil, want{true, true, VerbProxy, "", "v1", "ns", "services", "proxy", "s:http", admin}},
		{"GET", "/api/v1/namespaces/ns/pods/p/proxy", nil, want{true, true, VerbProxy, "", "v1", "ns", "pods", "proxy", "p", admin}},
		// The legacy proxy prefix takes no subresource.
		{"GET", "/api/v1/proxy/namespaces/ns/pods/p/status", nil, want{true, true, VerbProxy, "", "v1", "ns", "pods", "", "p", admin}},
		{"GET", "/api/v1/proxy/nodes/n/metrics", nil, want{true, true, VerbProxy, "", "v1", "", "nodes", "", "n", admin}},
		// Power, whatever the verb.
		{"GET", "/apis/rbac.authorization.k8s.io/v1/clusterroles", nil, want{true, true, VerbList, "rbac.authorization.k8s.io", "v1", "", "clusterroles", "", "", admin}},
		{"POST", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/rolebindings", nil, want{true, true, VerbCreate, "rbac.authorization.k8s.io", "v1", "ns", "rolebindings", "", "", admin}},
		{"GET", "/apis/rbac.authorization.k8s.io/v1/namespaces/ns/roles/r", nil, want{true, true, VerbGet, "rbac.authorization.k8s.io", "v1", "ns", "roles", "", "r", admin}},
		{"DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/b", nil, want{true, true, VerbDelete, "rbac.authorization.k8s.io", "v1", "", "clusterrolebindings", "", "b", admin}},
		{"PUT", "/apis/certificates.k8s.io/v1/certificatesigningrequests/csr/approval", nil, want{true, true, VerbUpdate, "certificates.k8s.io", "v1", "", "certificatesigningrequests", "approval", "csr", admin}},
		{"POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", nil, want{true, true, VerbCreate, "certificates.k8s.io", "v1", "", "certificatesigningrequests", "", "", write}},
		{"POST", "/api/v1/namespaces/ns/serviceaccounts/sa/token", nil, want{true, true, VerbCreate, "", "v1", "ns", "serviceaccounts", "token", "sa", admin}},
		{"GET", "/api/v1/namespaces/ns/serviceaccounts/sa", nil, want{true, true, VerbGet, "", "v1", "ns", "serviceaccounts", "", "sa", read}},
		{"PATCH", "/api/v1/namespaces/ns/pods/p/ephemeralcontainers", nil, want{true, true, VerbPatch, "", "v1", "ns", "pods", "ephemeralcontainers", "p", admin}},
		{"GET", "/api/v1/namespaces/ns/pods/p/ephemeralcontainers", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "ephemeralcontainers", "p", read}},
		// A resource named like RBAC's in another group is not RBAC.
		{"GET", "/apis/example.com/v1/roles", nil, want{true, true, VerbList, "example.com", "v1", "", "roles", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods", map[string]string{"impersonate-user": "admin"}, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", admin}},
		{"GET", "/api/v1/namespaces/ns/pods", map[string]string{"Impersonate-Group": "system:masters"}, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", admin}},
		{"GET", "/version", map[string]string{"impersonate-extra-scopes": "x"}, want{true, false, "get", "", "", "", "", "", "", admin}},
		// Non-resource paths and discovery.
		{"GET", "/healthz", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/version", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/openapi/v2", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/openapi/v3/apis/apps/v1", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/api", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/api/v1", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/apis", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/apis/apps", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/apis/apps/v1", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/apis/apps/v1/", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"GET", "/", nil, want{true, false, "get", "", "", "", "", "", "", read}},
		{"HEAD", "/livez", nil, want{true, false, "head", "", "", "", "", "", "", read}},
		{"POST", "/logs/x", nil, want{true, false, "post", "", "", "", "", "", "", write}},
		// Trailing slashes are trimmed, as splitPath does.
		{"GET", "/api/v1/namespaces/ns/pods/", nil, want{true, true, VerbList, "", "v1", "ns", "pods", "", "", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p/", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "", "p", read}},
		// Percent-encoded segments decode before they split.
		{"GET", "/api/v1/namespaces/n%73/pods/p%2Dx", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "", "p-x", read}},
		{"GET", "/api/v1/namespaces/ns/pods/p/%65xec", nil, want{true, true, VerbExec, "", "v1", "ns", "pods", "exec", "p", admin}},
		{"GET", "/api/v1/namespaces/ns/pods/p/log?x=1#frag", nil, want{true, true, VerbGet, "", "v1", "ns", "pods", "log", "p", read}},
		// Not understood: unknown.
		{"OPTIONS", "/api/v1/namespaces/ns/pods", nil, want{false, true, "", "", "v1", "ns", "pods", "", "", unknown}},
		{"GET", "/api/v1/watch", nil, want{false, true, "", "", "v1", "", "", "", "", unknown}},
		{"GET", "/api/v1/proxy", nil, want{false, true, "", "", "v1", "", "", "", "", unknown}},
		{"GET", "/api/v1//pods", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"GET", "/api/v1/namespaces//pods", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"GET", "/api/v1/namespaces/ns/pods/../secrets", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"GET", "/api/v1/namespaces/ns/pods/%2e%2e/secrets", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"GET", "/api/v1/namespaces/ns%2Fkube-system/secrets", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"GET", "/api/v1/namespaces/ns/pods/%zz", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
		{"", "/healthz", nil, want{false, false, "", "", "", "", "", "", "", unknown}},
	}
	for _, c := range cases {
		kr, ok := ParseKubernetes(c.method, c.target, c.headers)
		got := want{ok, kr.IsResource, kr.Verb, kr.Group, kr.Version, kr.Namespace, kr.Resource, kr.Subresource, kr.Name, kr.Class()}
		if !ok {
			got = want{ok: false, class: policies.ClassUnknown}
			c.want = want{ok: false, class: policies.ClassUnknown}
		}
		if got != c.want {
			t.Errorf("%s %s %v:\n got %+v\nwant %+v", c.method, c.target, c.headers, got, c.want)
		}
		if cls, _ := ClassifyKubernetes(c.method, c.target, c.headers, nil); cls != c.want.class {
			t.Errorf("ClassifyKubernetes(%s %s) = %v, want %v", c.method, c.target, cls, c.want.class)
		}
	}
}

func TestClassifyKubernetesRulesOnlyTighten(t *testing.T) {
	rules := []policies.HTTPRule{
		{Methods: []string{"GET"}, Path: "/api/v1/namespaces/*/configmaps/**", Class: policies.ClassAdmin},
		{Methods: []string{"*"}, Path: "/api/v1/namespaces/*/pods/*/exec", Class: policies.ClassRead},
	}
	cases := []struct {
		method, target string
		headers        map[string]string
		want           policies.OperationClass
	}{
		{"GET", "/api/v1/namespaces/ns/configmaps/c", nil, policies.ClassAdmin},
		{"POST", "/api/v1/namespaces/ns/pods/p/exec", nil, policies.ClassAdmin},
		{"GET", "/api/v1/namespaces/ns/pods", nil, policies.ClassRead},
		{"GET", "/api/v1/namespaces/ns/pods?watch=1", map[string]string{"connection": "Upgrade", "upgrade": "websocket"}, policies.ClassAdmin},
		{"GET", "/api/v1//pods", nil, policies.ClassUnknown},
	}
	for _, c := range cases {
		if got, _ := ClassifyKubernetes(c.method, c.target, c.headers, rules); got != c.want {
			t.Errorf("ClassifyKubernetes(%s %s) = %v, want %v", c.method, c.target, got, c.want)
		}
	}
}
