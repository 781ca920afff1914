package httpapi

import (
	"strings"

	"github.com/sluicehq/sluice/policies"
)

// Class maps the request onto the decision model: reads read, changes
// write, and whatever opens a stream into a workload (exec, attach,
// portforward, proxy), grants power (RBAC, CSR approval, service account
// tokens, ephemeral containers) or acts as someone else (impersonation) is
// admin. A request with no verb is unknown. Reading Secrets stays a read:
// response masking hides their values.
func (r KubeRequest) Class() policies.OperationClass {
	if r.Impersonate {
		return policies.ClassAdmin
	}
	if !r.IsResource {
		switch r.Verb {
		case "":
			return policies.ClassUnknown
		case "get", "head", "options":
			return policies.ClassRead
		}
		return policies.ClassWrite
	}
	if r.grantsPower() {
		return policies.ClassAdmin
	}
	switch r.Verb {
	case VerbGet, VerbList, VerbWatch:
		return policies.ClassRead
	case VerbCreate, VerbUpdate, VerbPatch, VerbDelete, VerbDeleteCollection:
		return policies.ClassWrite
	case VerbExec, VerbAttach, VerbPortForward, VerbProxy:
		return policies.ClassAdmin
	}
	return policies.ClassUnknown
}

// rbacResources are the rbac.authorization.k8s.io resources: whoever
// writes them can grant themselves anything, and reading them maps who can.
var rbacResources = []string{"roles", "rolebindings", "clusterroles", "clusterrolebindings"}

// grantsPower reports requests that escalate privilege whatever their verb
// looks like.
func (r KubeRequest) grantsPower() bool {
	switch {
	case r.Group == "rbac.authorization.k8s.io" && contains(rbacResources, r.Resource):
		return true
	case r.Group == "certificates.k8s.io" && r.Resource == "certificatesigningrequests" && r.Subresource == "approval":
		return true // approving a CSR issues a cluster credential
	case r.Group == "" && r.Resource == "serviceaccounts" && r.Subresource == "token":
		return true // TokenRequest mints a token for the service account
	case r.Group == "" && r.Resource == "pods" && r.Subresource == "ephemeralcontainers":
		// kubectl debug: adding a container runs a shell in the pod, as
		// exec does. Reading the subresource is reading the pod.
		return r.Verb != VerbGet
	}
	return false
}

// impersonates reports Impersonate-User, -Group, -Uid or -Extra-* headers.
func impersonates(headers map[string]string) bool {
	for k := range headers {
		if len(k) >= len("impersonate-") && strings.EqualFold(k[:len("impersonate-")], "impersonate-") {
			return true
		}
	}
	return false
}

// ClassifyKubernetes classifies a request to a Kubernetes API target. The
// class comes from the parsed request (KubeRequest.Class); an unparseable
// request is unknown; a protocol upgrade is at least admin. The first
// policy rule whose method and path match can only raise the class: a rule
// tightens Kubernetes classification, it never turns exec into a read.
func ClassifyKubernetes(method, target string, headers map[string]string, rules []policies.HTTPRule) (policies.OperationClass, KubeRequest) {
	kr, ok := ParseKubernetes(method, target, headers)
	class := policies.ClassUnknown
	if ok {
		class = kr.Class()
	}
	if IsUpgrade(headers) {
		class = max(class, policies.ClassAdmin)
	}
	path, _ := splitTarget(target)
	for _, r := range rules {
		if methodMatches(r.Methods, method) && PathMatches(r.Path, path) {
			class = max(class, r.Class)
			break
		}
	}
	return class, kr
}
