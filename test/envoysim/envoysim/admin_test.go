package envoysim

import (
	"fmt"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// Issue item 5: GET /stats prints counters under Envoy's stat names, and the
// violation counters are visible and fail RequireNoViolations.
func TestAdminStatsAndViolations(t *testing.T) {
	ps := setupProc(t, respond(echo), echoHandler, nil)
	c := dial(t, ps.sim, "db")
	mustWrite(t, c, "x")
	readN(t, c, 1)
	ps.sim.violation(ViolationEmptyResponses, 2) // as if a processor had sent two empty replies

	srv := httptest.NewServer(ps.sim.AdminHandler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range []string{
		"network_ext_proc.ep.streams_started: 1",
		"network_ext_proc.ep.read_data_injected: 1",
		"network_ext_proc.ep.spurious_msgs_received: 0",
		"network_ext_proc.ep.empty_response_received: 0",
		"network_ext_proc.ep.message_timeouts: 0",
		"tcp.tcp.downstream_cx_total: 1",
		"envoysim.violations.empty_responses: 2",
	} {
		if !strings.Contains(string(body), line+"\n") {
			t.Errorf("/stats lacks %q", line)
		}
	}

	rec := &recordingTB{}
	ps.sim.RequireNoViolations(rec)
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "empty_responses = 2") {
		t.Fatalf("RequireNoViolations reported %q", rec.errors)
	}
}

type recordingTB struct{ errors []string }

func (r *recordingTB) Helper() {}
func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, strings.TrimSpace(fmt.Sprintf(format, args...)))
}
