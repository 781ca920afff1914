package grants_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/authz/grants"
)

// hookReceiver is the approvers' chat webhook: it records each POST, and
// answers with the status codes queued in fail first.
type hookReceiver struct {
	srv  *httptest.Server
	got  chan grants.SlackMessage
	mu   sync.Mutex
	fail []int
	// hits counts every POST, failed or not.
	hits atomic.Int64
}

func newHookReceiver(t *testing.T) *hookReceiver {
	r := &hookReceiver{got: make(chan grants.SlackMessage, 100)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		r.mu.Lock()
		var status int
		if len(r.fail) > 0 {
			status, r.fail = r.fail[0], r.fail[1:]
		}
		r.mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
			return
		}
		var m grants.SlackMessage
		if req.Method != "POST" || req.Header.Get("Content-Type") != "application/json" || json.NewDecoder(req.Body).Decode(&m) != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		r.got <- m
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// url is secret, as a Slack webhook URL is: its path is the credential.
func (r *hookReceiver) url() string { return r.srv.URL + "/services/T000/B000/secret-path-xyz" }

func (r *hookReceiver) failNext(statuses ...int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail = append(r.fail, statuses...)
}

// next waits for the next announcement.
func (r *hookReceiver) next(t *testing.T) grants.SlackMessage {
	t.Helper()
	select {
	case m := <-r.got:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook POST arrived")
	}
	return grants.SlackMessage{}
}

// none checks that nothing more is announced.
func (r *hookReceiver) none(t *testing.T) {
	t.Helper()
	select {
	case m := <-r.got:
		t.Fatalf("unexpected webhook POST: %s", m.Text)
	case <-time.After(100 * time.Millisecond):
	}
}
