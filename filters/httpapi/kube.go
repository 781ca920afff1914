package httpapi

import (
	"net/url"
	"strings"
)

// KubeVerb is what a Kubernetes API request does, in the API server's
// vocabulary (the verbs RBAC rules name), extended with exec, attach,
// portforward and proxy: sluice names those by what they open, not by the
// HTTP method that opens them.
type KubeVerb string

// Kubernetes verbs. Non-resource requests (/healthz, /version, discovery)
// carry the lower-cased HTTP method as their verb, as the API server does.
const (
	VerbGet              KubeVerb = "get"
	VerbList             KubeVerb = "list"
	VerbWatch            KubeVerb = "watch"
	VerbCreate           KubeVerb = "create"
	VerbUpdate           KubeVerb = "update"
	VerbPatch            KubeVerb = "patch"
	VerbDelete           KubeVerb = "delete"
	VerbDeleteCollection KubeVerb = "deletecollection"
	VerbExec             KubeVerb = "exec"
	VerbAttach           KubeVerb = "attach"
	VerbPortForward      KubeVerb = "portforward"
	VerbProxy            KubeVerb = "proxy"
)

// KubeRequest is a Kubernetes API request, parsed as the API server's
// RequestInfoFactory parses it (k8s.io/apiserver/pkg/endpoints/request,
// requestinfo.go), so that sluice authorizes what the API server will
// serve, not what the path looks like.
type KubeRequest struct {
	// IsResource is false for non-resource paths: /healthz, /version,
	// /openapi/v2, and discovery (/api, /api/v1, /apis, /apis/apps,
	// /apis/apps/v1).
	IsResource bool
	Verb       KubeVerb
	// APIPrefix is "api" (the core group) or "apis".
	APIPrefix   string
	Group       string
	Version     string
	Namespace   string
	Resource    string
	Subresource string
	// Name is the object's name: the path's, or for list and watch the
	// value of a fieldSelector metadata.name=NAME, as the API server sets it.
	Name string
	// Path is the percent-decoded request path.
	Path string
	// Impersonate is set when the request carries Impersonate-* headers:
	// it acts as another user, whatever the verb.
	Impersonate bool
}

// Path vocabularies of requestinfo.go.
var (
	// specialVerbs are legacy path prefixes naming the verb
	// (/api/v1/watch/..., /api/v1/proxy/...).
	specialVerbs = []string{"proxy", "watch"}
	// namespaceSubresources distinguish /namespaces/NS/status (a
	// subresource of the namespace) from /namespaces/NS/pods (a resource).
	namespaceSubresources = []string{"status", "finalize"}
)

// ParseKubernetes parses a request to the Kubernetes API. target is the
// request's path with its query string, as Envoy's :path carries it;
// headers has lower-case keys. It returns false when the request cannot be
// understood: a malformed escape, an escaped slash, an empty, "." or ".."
// segment (the API server has no object with such a name, and a proxy in
// between may normalize them differently), a legacy verb prefix with
// nothing after it, or a method the API server maps to no verb.
func ParseKubernetes(method, target string, headers map[string]string) (KubeRequest, bool) {
	rawPath, rawQuery := splitTarget(target)
	kr := KubeRequest{Impersonate: impersonates(headers)}
	if strings.Contains(rawPath, "%2f") || strings.Contains(rawPath, "%2F") {
		return kr, false
	}
	path, err := url.PathUnescape(rawPath)
	if err != nil {
		return kr, false
	}
	kr.Path = path
	// requestinfo.go splitPath: trim slashes, split on "/". The API server
	// reads the decoded URL.Path, so segments split after unescaping.
	parts := splitPath(path)
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return kr, false
		}
	}
	kr.Verb = KubeVerb(strings.ToLower(method))
	if !resourcePath(&kr, parts) {
		// "return a non-resource request": the verb is the lower-cased method.
		return kr, method != ""
	}
	query, _ := url.ParseQuery(rawQuery) // as URL.Query(): malformed pairs are dropped
	return kr, resourceRequest(&kr, parts, method, query)
}

// resourcePath reports whether parts address an API resource: /api/VERSION/...
// or /apis/GROUP/VERSION/... with at least one part after the version. It
// fills in the prefix, group and version.
func resourcePath(kr *KubeRequest, parts []string) bool {
	if len(parts) < 3 {
		return false
	}
	switch parts[0] {
	case "api": // groupless: the core group
		kr.Version = parts[1]
	case "apis":
		if len(parts) < 4 {
			return false
		}
		kr.Group, kr.Version = parts[1], parts[2]
	default:
		return false
	}
	kr.APIPrefix = parts[0]
	kr.IsResource = true
	return true
}

// resourceRequest follows NewRequestInfo from the part after the version:
// the verb (from a legacy prefix or the method), the namespace, then
// resource/name/subresource, then list, watch and deletecollection for
// requests without a name. It reports false when there is no verb.
func resourceRequest(kr *KubeRequest, parts []string, method string, query url.Values) bool {
	rest := parts[2:]
	if kr.APIPrefix == "apis" {
		rest = parts[3:]
	}
	if contains(specialVerbs, rest[0]) {
		// "unable to determine kind and namespace from url"
		if len(rest) < 2 {
			return false
		}
		kr.Verb, rest = KubeVerb(rest[0]), rest[1:]
	} else {
		kr.Verb = methodVerb(method)
	}
	if rest[0] == "namespaces" {
		if len(rest) > 1 {
			kr.Namespace = rest[1]
			if len(rest) > 2 && !contains(namespaceSubresources, rest[2]) {
				rest = rest[2:]
			}
		}
	}
	// rest is resource/name/subresource/anything/else; the legacy proxy
	// prefix takes no subresource (specialVerbsNoSubresources).
	kr.Resource = rest[0]
	if len(rest) >= 2 {
		kr.Name = rest[1]
	}
	if len(rest) >= 3 && kr.Verb != VerbProxy {
		kr.Subresource = rest[2]
	}
	if kr.Name == "" && kr.Verb == VerbGet {
		kr.Verb = VerbList
		if watchRequested(query) {
			kr.Verb = VerbWatch
		}
		kr.Name = fieldSelectorName(query.Get("fieldSelector"))
	}
	if kr.Name == "" && kr.Verb == VerbDelete {
		kr.Verb = VerbDeleteCollection
	}
	sluiceVerb(kr)
	return kr.Verb != ""
}

// sluiceVerb names the streaming subresources by what they open. The API
// server sees "create pods/exec" (or "get" over WebSocket); sluice calls
// it exec whatever the method, so a policy cannot allow it as a write.
func sluiceVerb(kr *KubeRequest) {
	switch kr.Subresource {
	case "exec":
		kr.Verb = VerbExec
	case "attach":
		kr.Verb = VerbAttach
	case "portforward":
		kr.Verb = VerbPortForward
	case "proxy":
		kr.Verb = VerbProxy
	}
}

// methodVerb is requestinfo.go's method switch; other methods have no verb.
func methodVerb(method string) KubeVerb {
	switch method {
	case "POST":
		return VerbCreate
	case "GET", "HEAD":
		return VerbGet
	case "PUT":
		return VerbUpdate
	case "PATCH":
		return VerbPatch
	case "DELETE":
		return VerbDelete
	}
	return ""
}

// watchRequested applies apimachinery's Convert_Slice_string_To_bool to
// the first watch value: only "0" and "false" (any case) are false, so
// "watch=" and "watch=yes" watch.
func watchRequested(q url.Values) bool {
	v, ok := q["watch"]
	if !ok || len(v) == 0 {
		return false
	}
	return v[0] != "0" && !strings.EqualFold(v[0], "false")
}

// fieldSelectorName returns NAME when the selector requires
// metadata.name=NAME (or ==), as RequiresExactMatch does, and NAME is a
// valid path segment name (no "/", no "%", not "." or "..").
func fieldSelectorName(sel string) string {
	for _, term := range splitUnescaped(sel, ',') {
		v, ok := strings.CutPrefix(term, "metadata.name==")
		if !ok {
			v, ok = strings.CutPrefix(term, "metadata.name=")
		}
		if !ok {
			continue
		}
		v = unescapeSelector(v)
		if v == "" || v == "." || v == ".." || strings.ContainsAny(v, "/%") {
			return ""
		}
		return v
	}
	return ""
}

// splitUnescaped splits s at sep characters not escaped by a backslash
// (field selector values escape "\", "," and "=").
func splitUnescaped(s string, sep byte) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case sep:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func unescapeSelector(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitTarget separates an HTTP request target into its path and query,
// dropping any fragment.
func splitTarget(target string) (path, query string) {
	if i := strings.IndexByte(target, '#'); i >= 0 {
		target = target[:i]
	}
	path, query, _ = strings.Cut(target, "?")
	return path, query
}

// splitPath is requestinfo.go's splitPath.
func splitPath(path string) []string {
	path = strings.Trim(path, "/")
	if path == "" {
		return nil
	}
	return strings.Split(path, "/")
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
