package httpapi

import (
	"encoding/json"
	"fmt"
	"slices"

	"github.com/sluicehq/sluice/filters/mask"
	"github.com/sluicehq/sluice/policies"
)

// Replacements. Each keeps the document valid and the value's JSON type,
// so a client that decodes the response into its types still can.
const (
	// MaskedString replaces a string a path names, and a Secret's
	// stringData values: it says what happened and reveals no length.
	MaskedString = "[masked]"
	// MaskedSecretData replaces a Secret's data values, which clients
	// decode as base64: it is base64 for "[masked]".
	MaskedSecretData = "W21hc2tlZF0="
	// maskedNumber and maskedBool replace numbers and booleans a path
	// names; null stays null, as it does for columns, so masking never
	// reveals whether a value was present.
	maskedNumber = "0"
	maskedBool   = "false"
)

// lastAppliedAnnotation holds the object kubectl apply last sent: for a
// Secret, its data in clear. It is masked as the object is.
const lastAppliedAnnotation = "kubectl.kubernetes.io/last-applied-configuration"

// maxReportPaths bounds Report.Paths: a response masks the same few
// places in every item, and an audit record stays small.
const maxReportPaths = 32

// JSONRules masks JSON responses: values at configured JSON paths,
// Kubernetes Secret data, and detector hits in every other string. Compile
// it once when the configuration loads; it is safe for concurrent use.
type JSONRules struct {
	paths     []jsonPath
	detectors *mask.Detectors
}

// NewJSONRules compiles JSON paths (the package documentation gives the
// syntax) and detector names. An error names the path, the offset and
// what is wrong there.
func NewJSONRules(paths, detectors []string) (*JSONRules, error) {
	r := &JSONRules{}
	for _, src := range paths {
		p, err := parseJSONPath(src)
		if err != nil {
			return nil, err
		}
		r.paths = append(r.paths, p)
	}
	d, err := mask.NewDetectors(detectors)
	if err != nil {
		return nil, err
	}
	r.detectors = d
	return r, nil
}

// CompileJSONRules selects the named masking rules (a decision's Mask
// list) from the configuration's and compiles their JSON paths and
// detectors; column rules are the Postgres path's.
func CompileJSONRules(all []policies.MaskingRule, names []string) (*JSONRules, error) {
	var paths, detectors []string
	for _, m := range all {
		if !slices.Contains(names, m.Name) {
			continue
		}
		for _, p := range m.JSONPaths {
			if _, err := parseJSONPath(p); err != nil {
				return nil, fmt.Errorf("masking rule %q: %w", m.Name, err)
			}
		}
		paths = append(paths, m.JSONPaths...)
		detectors = append(detectors, m.Detectors...)
	}
	r, err := NewJSONRules(paths, detectors)
	if err != nil {
		return nil, fmt.Errorf("masking rules %v: %w", names, err)
	}
	return r, nil
}

// JSONOptions says what a response is.
type JSONOptions struct {
	// Kubernetes marks a Kubernetes API response. Secret objects (kind
	// Secret, anywhere, including List items, Table rows and watch event
	// objects) have every data and stringData value replaced, keys kept.
	// Configured paths apply to the response and again to each object it
	// carries (List items, watch event objects, Table row objects), so
	// $.data masks a ConfigMap's data whether it was got, listed or
	// watched. An object's last-applied-configuration annotation (kubectl
	// apply's copy of the object) is masked as the object is.
	Kubernetes bool
	// Secrets marks a response to a request for the secrets resource
	// (KubeRequest.Resource == "secrets"): objects it carries that name no
	// kind are Secrets too, as a SecretList's items are. It needs
	// Kubernetes.
	Secrets bool
}

// Report is what masking did, for the audit record.
type Report struct {
	// Values counts values replaced and strings in which detectors
	// redacted something.
	Values int
	// Secrets counts Kubernetes Secret objects that carried data or
	// stringData, now masked.
	Secrets int
	// Paths lists where values were masked, as JSON paths with [*] for
	// any array index ($.items[*].data), first seen first, each once, at
	// most maxReportPaths; Truncated says more were left out.
	Paths     []string
	Truncated bool
	// Detectors lists the detectors that found something.
	Detectors []string
}

// Masked reports whether any value was replaced or redacted.
func (r Report) Masked() bool { return r.Values > 0 }

// addPath records p once; it allocates only for a path not yet seen.
func (r *Report) addPath(p []byte) {
	for _, q := range r.Paths {
		if q == string(p) {
			return
		}
	}
	if len(r.Paths) == maxReportPaths {
		r.Truncated = true
		return
	}
	r.Paths = append(r.Paths, string(p))
}

// Empty reports whether the rules mask nothing outside Kubernetes Secrets.
func (r *JSONRules) Empty() bool {
	return r == nil || (len(r.paths) == 0 && r.detectors.Empty())
}

// Mask appends the masked form of body, one JSON document (object, array
// or scalar, with any surrounding whitespace), to dst, which must not
// overlap body. Bytes no rule touches are copied unchanged. A body that
// is not JSON is an error wrapping ErrInvalidJSON, and nothing is
// appended: the caller must not pass the body on. Nil rules mask only
// Kubernetes Secrets.
func (r *JSONRules) Mask(dst, body []byte, opt JSONOptions) ([]byte, Report, error) {
	if !json.Valid(body) {
		return dst, Report{}, invalidJSON(body)
	}
	var w walker
	w.reset(r, opt, body, dst)
	w.document()
	return w.out, w.rep, nil
}
