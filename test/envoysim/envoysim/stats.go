package envoysim

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// Stats holds counters and gauges under Envoy's own stat names, e.g.
// network_ext_proc.<stat_prefix>.spurious_msgs_received or
// ext_authz.<stat_prefix>.denied. Filter configs that share a stat prefix share
// counters, as in Envoy.
type Stats struct {
	mu     sync.Mutex
	values map[string]*atomic.Int64
	gauges map[string]bool
}

func newStats() *Stats {
	return &Stats{values: map[string]*atomic.Int64{}, gauges: map[string]bool{}}
}

// counter returns the named counter, creating it at zero.
func (s *Stats) counter(name string) *atomic.Int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.values[name]
	if !ok {
		v = new(atomic.Int64)
		s.values[name] = v
	}
	return v
}

func (s *Stats) gauge(name string) *atomic.Int64 {
	v := s.counter(name)
	s.mu.Lock()
	s.gauges[name] = true
	s.mu.Unlock()
	return v
}

// Get returns the value of a counter or gauge, 0 if it does not exist.
func (s *Stats) Get(name string) int64 {
	s.mu.Lock()
	v, ok := s.values[name]
	s.mu.Unlock()
	if !ok {
		return 0
	}
	return v.Load()
}

// Snapshot returns every stat by name.
func (s *Stats) Snapshot() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int64, len(s.values))
	for k, v := range s.values {
		out[k] = v.Load()
	}
	return out
}

// WriteTo prints "name: value" lines sorted by name, the format of Envoy's
// admin GET /stats.
func (s *Stats) WriteTo(w io.Writer) (int64, error) {
	snap := s.Snapshot()
	names := make([]string, 0, len(snap))
	for k := range snap {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		fmt.Fprintf(&b, "%s: %d\n", k, snap[k])
	}
	n, err := io.WriteString(w, b.String())
	return int64(n), err
}

// Violation kinds: things Envoy tolerates that mean an extension service broke
// the contract (or, for unanswered chunks, that bytes were lost at a close).
const (
	// ViolationUnansweredChunks counts network ext_proc chunks carrying bytes
	// that were sent to the processor and still unanswered when the gRPC stream
	// closed: bytes lost, by the processor or by a close that did not wait
	// (WithCloseThroughFilterManager).
	ViolationUnansweredChunks = "unanswered_chunks"
	// ViolationEmptyResponses counts ProcessingResponses with neither read_data
	// nor write_data (Envoy's empty_response_received; contract §1.4 step 6).
	ViolationEmptyResponses = "empty_responses"
	// ViolationUnsolicitedResponses counts read_data/write_data responses with
	// no request of that direction outstanding. Envoy injects them anyway.
	ViolationUnsolicitedResponses = "unsolicited_responses"
	// ViolationWrongTypeResponses counts responses of the wrong type: network
	// ext_proc responses with both read_data and write_data set (write_data is
	// dropped), and HTTP ext_proc responses that do not match the direction's
	// state (Envoy's spurious_msgs_received: a 500 when fail-closed).
	ViolationWrongTypeResponses = "wrong_type_responses"
	// ViolationTimeouts counts message_timeout firings.
	ViolationTimeouts = "timeouts"
	// ViolationSpuriousResponses counts responses after processing completed.
	ViolationSpuriousResponses = "spurious_responses"
	// ViolationVersionDependentMutations counts HTTP ext_authz request header
	// mutations whose effect differs between Envoy versions (contract §3): a
	// HeaderValueOption with neither append nor append_action, ADD_IF_ABSENT
	// or OVERWRITE_IF_EXISTS where the outcomes differ, append=true on an
	// absent header, a header both set and removed. The portable recipe is
	// OVERWRITE_IF_EXISTS_OR_ADD.
	ViolationVersionDependentMutations = "version_dependent_mutations"
	// ViolationIgnoredHeaderValues counts header values Envoy does not read:
	// an HTTP ext_proc mutation with only value set (Envoy reads raw_value, so
	// the header is set empty), an ext_authz one with only raw_value set
	// (ext_authz reads value).
	ViolationIgnoredHeaderValues = "ignored_header_values"
	// ViolationIgnoredResponseFields counts HTTP ext_proc response fields Envoy
	// ignores: anything beside override_message_timeout, mode_override without
	// allow_mode_override, header mutations in a STREAMED body response.
	ViolationIgnoredResponseFields = "ignored_response_fields"
	// ViolationUnsupportedResponses counts HTTP ext_proc responses using
	// features the sim does not implement (streamed_immediate_response, drain,
	// flow control, typed dynamic metadata).
	ViolationUnsupportedResponses = "unsupported_responses"
)

var violationKinds = []string{
	ViolationUnansweredChunks, ViolationEmptyResponses, ViolationUnsolicitedResponses,
	ViolationWrongTypeResponses, ViolationTimeouts, ViolationSpuriousResponses,
	ViolationVersionDependentMutations, ViolationIgnoredHeaderValues, ViolationIgnoredResponseFields,
	ViolationUnsupportedResponses,
}

// violation increments a violation counter; they live in the stats store under
// envoysim.violations.<kind>.
func (s *Sim) violation(kind string, n int64) {
	if n == 0 {
		return
	}
	s.stats.counter("envoysim.violations." + kind).Add(n)
}

// Violations returns the contract-violation counters by kind.
func (s *Sim) Violations() map[string]int64 {
	out := map[string]int64{}
	for _, k := range violationKinds {
		out[k] = s.stats.Get("envoysim.violations." + k)
	}
	return out
}

// TB is the subset of testing.TB that RequireNoViolations uses.
type TB interface {
	Helper()
	Errorf(format string, args ...any)
}

// RequireNoViolations fails t if any contract-violation counter is non-zero.
func (s *Sim) RequireNoViolations(t TB) {
	t.Helper()
	for _, k := range violationKinds {
		if v := s.stats.Get("envoysim.violations." + k); v != 0 {
			t.Errorf("envoysim: contract violation %s = %d", k, v)
		}
	}
}

// AdminHandler serves GET /stats like Envoy's admin endpoint.
func (s *Sim) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		_, _ = s.stats.WriteTo(w)
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "LIVE\n")
	})
	return mux
}
