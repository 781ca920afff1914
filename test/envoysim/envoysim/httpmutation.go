package envoysim

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Header mutations from an HTTP ext_proc processor, following
// source/extensions/filters/http/ext_proc/mutation_utils.cc
// (applyHeaderMutations, applyBodyMutations) and the default
// HeaderMutationRules of source/extensions/filters/common/mutation_rules/
// checker.cc: removals first, then sets; the value is read from raw_value
// (runtime send_header_raw_value, on by default); value and raw_value both
// set, or an invalid name or value, fails the whole message (500); changes to
// host, :authority, :method, :scheme and x-envoy-* and removal of pseudo
// headers or host are ignored and counted in rejected_header_mutations.

type mutationResult int

const (
	mutationOK mutationResult = iota
	mutationIgnore
	mutationFail
)

// checkMutation is Checker::check with default rules, or with allow_all_routing
// and allow_envoy for immediate responses (ImmediateMutationChecker).
func checkMutation(remove bool, name, value string, permissive bool) mutationResult {
	if remove && (strings.HasPrefix(name, ":") || name == "host") {
		return mutationIgnore
	}
	switch {
	case name == "host" || name == ":authority" || name == ":method" || name == ":scheme":
		if !permissive {
			return mutationIgnore
		}
	case strings.HasPrefix(name, "x-envoy"):
		if !permissive {
			return mutationIgnore
		}
	}
	if name == ":status" && !remove {
		if c, err := strconv.Atoi(value); err != nil || c < 200 || c > 999 {
			return mutationIgnore
		}
	}
	return mutationOK
}

// applyHeaderMutation applies m to h. It returns the error that makes Envoy
// answer status_on_error, and counts headers given in value only (set empty:
// Envoy reads raw_value) in rawOnly.
func applyHeaderMutation(m *extprocv3.HeaderMutation, h *headerMap, replacing, permissive bool, rejected *atomic.Int64, rawOnly *int) error {
	for _, name := range m.GetRemoveHeaders() {
		if !validHeaderName(name) {
			rejected.Add(1)
			return errors.New("Invalid character in remove_headers mutation.")
		}
		name = strings.ToLower(name)
		if checkMutation(true, name, "", permissive) != mutationOK {
			rejected.Add(1)
			continue
		}
		h.remove(name)
	}
	for _, sh := range m.GetSetHeaders() {
		hv := sh.GetHeader()
		if hv == nil {
			continue
		}
		if hv.GetValue() != "" && len(hv.GetRawValue()) > 0 {
			rejected.Add(1)
			return errors.New("Only one of value or raw_value in the HeaderValue message should be set.")
		}
		if hv.GetValue() != "" {
			*rawOnly++
		}
		value := string(hv.GetRawValue())
		if !validHeaderName(hv.GetKey()) || !validHeaderValue(value) {
			rejected.Add(1)
			return errors.New("Invalid character in set_headers mutation.")
		}
		name := strings.ToLower(hv.GetKey())
		res := checkMutation(false, name, value, permissive)
		if replacing && name == ":method" {
			res = mutationOK // CONTINUE_AND_REPLACE may change the method
		}
		if res != mutationOK {
			rejected.Add(1)
			continue
		}
		if sh.GetAppend().GetValue() && h.has(name) {
			h.add(name, value)
		} else {
			h.set(name, value)
		}
	}
	return nil
}

// applyBodyMutation replaces or clears b (MutationUtils::applyBodyMutations).
func applyBodyMutation(m *extprocv3.BodyMutation, b *buffer) {
	switch mu := m.GetMutation().(type) {
	case *extprocv3.BodyMutation_ClearBody:
		if mu.ClearBody {
			b.take()
		}
	case *extprocv3.BodyMutation_Body:
		b.take()
		b.add(mu.Body)
	}
}
