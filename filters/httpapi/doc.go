// Package httpapi decides what an HTTP request does and masks what its
// response reveals (design.md section 7). It knows nothing of Envoy or
// gRPC: method, path and headers in, a class out; JSON bytes in, masked
// JSON bytes and a report out. authz and extproc adapt it.
//
// # Classification
//
// Classify serves HTTP APIs described only by policy: the first
// policies.HTTPRule whose method and path pattern match decides, else safe
// methods read and others write.
//
// ClassifyKubernetes serves the Kubernetes API. ParseKubernetes reads a
// request as the API server's RequestInfoFactory does
// (k8s.io/apiserver/pkg/endpoints/request/requestinfo.go): the
// /api/VERSION and /apis/GROUP/VERSION prefixes, the legacy /watch/ and
// /proxy/ verb prefixes, /namespaces/NS/..., resource/name/subresource,
// GET on a collection as list (or watch with ?watch=, true unless "0" or
// "false"), DELETE on a collection as deletecollection. KubeRequest.Class
// maps it onto the decision model:
//
//	get, list, watch                                   read
//	create, update, patch, delete, deletecollection    write
//	exec, attach, portforward, proxy (subresources)    admin
//	RBAC roles and bindings, CSR approval,
//	serviceaccounts/token, ephemeral containers,
//	Impersonate-* headers, protocol upgrades           admin
//	no verb, or a path it refuses to guess at          unknown
//
// policies.Target has no field that marks a target as Kubernetes yet; the
// caller chooses ClassifyKubernetes for such targets.
//
// # Masking JSON responses
//
// JSONRules.Mask masks one JSON document; a LineMasker masks a watch
// stream (newline-delimited JSON, in chunks of any size) line by line.
// Both validate with encoding/json first (an invalid document is an error
// wrapping ErrInvalidJSON, and the caller fails closed), then walk the
// validated bytes once, copying unchanged bytes through and splicing
// replacements in:
//
//   - a value a configured path selects (see jsonPath for the syntax:
//     $.data, $.items[*].data, $.spec.containers[*].env[*].value,
//     $.metadata.annotations["example.com/key"]) is masked whole: strings
//     become "[masked]", numbers 0, booleans false, null stays null, and an
//     object or array keeps its keys and length with every scalar inside
//     masked, so a client decoding the response into its types still can;
//   - in a Kubernetes response (JSONOptions.Kubernetes), every object of
//     kind Secret, anywhere (a get, a List's items, a watch event's object,
//     a Table row's object), has each data value replaced with
//     MaskedSecretData (valid base64) and each stringData value with
//     "[masked]", keys kept; paths apply again from each object a List,
//     watch event or Table carries; and an object's kubectl
//     last-applied-configuration annotation, the object as last applied,
//     is masked as the object is;
//   - every other string is scanned by the configured detectors
//     (filters/mask), after unescaping, and hits are shaped (mask.Redact).
//
// # JSON paths
//
// Paths are the subset of JSONPath (RFC 9535) that can be matched while
// walking a document once:
//
//	path     = "$" *segment
//	segment  = "." name | ".*" | "[" selector "]"
//	selector = "*" | index | string
//	name     = (ALPHA / "_" / non-ASCII) *(ALPHA / DIGIT / "_" / non-ASCII)
//	index    = "0" / [1-9] *DIGIT
//	string   = a JSON string literal ("...") or the same in single quotes
//
// "*" selects every member of an object and every element of an array. A
// member name that is not a shorthand name (labels and annotations such
// as app.kubernetes.io/name, names with "-") goes in brackets. Descendant
// segments (..), negative indexes, slices, unions and filters are refused
// when the rules compile, with an error naming the offset.
//
// A Report says how many values were masked, in how many Secrets, where
// (as paths with [*] for indexes) and by which detectors, for the audit
// record. Object keys are never masked or scanned.
package httpapi
