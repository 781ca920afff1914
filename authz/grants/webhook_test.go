package grants_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/authz/grants"
	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

// testWebhookPerRequest: one announcement per new pending request,
// whether the API or anything else holding the store opened it; none
// for decisions.
func testWebhookPerRequest(t *testing.T, h *harness) {
	g := h.grant("copilot", "POST", "/v1/grants", `{"target":"orders-db","classes":["write"],"duration":"45m","reason":"INC-2 <!channel> & co"}`, http.StatusCreated)
	m := h.hook.next(t)
	for _, want := range []string{g.ID, "copilot", "on behalf of alice", "write", "orders-db", "45m0s", "INC-2 &lt;!channel&gt; &amp; co", "sluice grants approve " + g.ID} {
		if !strings.Contains(m.Text, want) {
			t.Errorf("announcement lacks %q:\n%s", want, m.Text)
		}
	}
	if len(m.Blocks) == 0 || !strings.Contains(blocksText(m), "sluice grants approve "+g.ID) {
		t.Errorf("blocks lack the approve command: %+v", m.Blocks)
	}
	// Opened elsewhere (as the ext_authz server does, through
	// authz.GrantsFrom on the same store).
	direct, err := h.store.Create(context.Background(), grants.Grant{
		Requester: grants.Identity{Issuer: h.idp.Issuer, Subject: "agent-2"}, Target: "orders-db",
		Classes: grants.Classes{policies.ClassWrite}, Duration: time.Hour, Reason: "statement refused",
	})
	if err != nil {
		t.Fatal(err)
	}
	if m := h.hook.next(t); !strings.Contains(m.Text, direct.ID) {
		t.Errorf("announcement %q is not for %s", m.Text, direct.ID)
	}
	h.grant("bob", "POST", "/v1/grants/"+g.ID+"/approve", "", http.StatusOK)
	h.grant("bob", "POST", "/v1/grants/"+direct.ID+"/deny", "", http.StatusOK)
	h.hook.none(t)
	if n := h.hook.hits.Load(); n != 2 {
		t.Errorf("webhook got %d POSTs, want 2", n)
	}
	if strings.Contains(h.webhookLog.String(), "secret-path-xyz") {
		t.Errorf("the webhook URL was logged:\n%s", h.webhookLog.String())
	}
}

func blocksText(m grants.SlackMessage) string {
	b, _ := json.Marshal(m.Blocks)
	return string(b)
}

// webhookFor starts a Webhook whose URL (a secret file) is r's.
func webhookFor(t *testing.T, r *hookReceiver, opts grants.WebhookOptions) (*grants.Webhook, *testenv.SyncBuffer) {
	file := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(file, []byte(r.url()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &policies.Config{Approvers: policies.Approvers{Groups: []string{"dba"}, WebhookURLFile: file}}
	logs := &testenv.SyncBuffer{}
	opts.Config = func() *policies.Config { return cfg }
	opts.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if opts.Backoff == 0 {
		opts.Backoff = time.Millisecond
	}
	return grants.NewWebhook(t.Context(), opts), logs
}

func pending(id string) grants.Grant {
	return grants.Grant{ID: id, Requester: grants.Identity{Subject: "agent-1"}, Target: "orders-db", Classes: grants.Classes{policies.ClassWrite},
		Duration: time.Hour, Reason: "r", State: grants.StatePending}
}

func TestWebhookRetriesTransientFailures(t *testing.T) {
	r := newHookReceiver(t)
	r.failNext(http.StatusServiceUnavailable, http.StatusTooManyRequests)
	w, logs := webhookFor(t, r, grants.WebhookOptions{})
	w.Notify(pending("gr_1"))
	if m := r.next(t); !strings.Contains(m.Text, "gr_1") {
		t.Errorf("got %q", m.Text)
	}
	if n := r.hits.Load(); n != 3 {
		t.Errorf("%d POSTs, want 3 (two failures, then success)", n)
	}
	if strings.Contains(logs.String(), "secret-path-xyz") {
		t.Errorf("URL logged:\n%s", logs)
	}
}

func TestWebhookGivesUp(t *testing.T) {
	r := newHookReceiver(t)
	// A 4xx is permanent: one POST, then the next request goes out.
	r.failNext(http.StatusNotFound)
	w, logs := webhookFor(t, r, grants.WebhookOptions{Attempts: 3})
	w.Notify(pending("gr_1"))
	w.Notify(pending("gr_2"))
	if m := r.next(t); !strings.Contains(m.Text, "gr_2") {
		t.Errorf("got %q, want gr_2", m.Text)
	}
	if n := r.hits.Load(); n != 2 {
		t.Errorf("%d POSTs, want 2", n)
	}
	// A 5xx is retried Attempts times, then dropped.
	r.failNext(500, 500, 500)
	w.Notify(pending("gr_3"))
	w.Notify(pending("gr_4"))
	if m := r.next(t); !strings.Contains(m.Text, "gr_4") {
		t.Errorf("got %q, want gr_4", m.Text)
	}
	if n := r.hits.Load(); n != 6 {
		t.Errorf("%d POSTs, want 6", n)
	}
	if l := logs.String(); !strings.Contains(l, "gr_1") || !strings.Contains(l, "gr_3") || strings.Contains(l, "secret-path-xyz") {
		t.Errorf("log should name the lost requests and not the URL:\n%s", l)
	}
}

// TestWebhookNeverBlocks: a webhook that hangs delays nothing, and a full
// queue drops announcements instead of holding requests.
func TestWebhookNeverBlocks(t *testing.T) {
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(release)
	file := filepath.Join(t.TempDir(), "url")
	os.WriteFile(file, []byte(hang.URL), 0o600)
	cfg := &policies.Config{Approvers: policies.Approvers{WebhookURLFile: file}}
	logs := &testenv.SyncBuffer{}
	w := grants.NewWebhook(t.Context(), grants.WebhookOptions{
		Config: func() *policies.Config { return cfg }, Queue: 2, Timeout: time.Minute,
		Logger: slog.New(slog.NewTextHandler(logs, nil)),
	})
	s := grants.Notifying(grants.NewEmbeddedStore(), w)
	start := time.Now()
	for range 10 {
		if _, err := s.Create(t.Context(), grants.Grant{Requester: grants.Identity{Issuer: "i", Subject: "a"}, Target: "t",
			Classes: grants.Classes{policies.ClassWrite}, Duration: time.Minute, Reason: "r"}); err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("10 requests took %v with a hanging webhook", d)
	}
	if !strings.Contains(logs.String(), "queue is full") {
		t.Errorf("dropped announcements are not logged:\n%s", logs)
	}
}

// TestWebhookUnconfigured: without a URL nothing is sent and nothing
// fails.
func TestWebhookUnconfigured(t *testing.T) {
	r := newHookReceiver(t)
	cfg := &policies.Config{}
	w := grants.NewWebhook(t.Context(), grants.WebhookOptions{Config: func() *policies.Config { return cfg }})
	s := grants.Notifying(grants.NewEmbeddedStore(), w)
	if _, err := s.Create(t.Context(), grants.Grant{Requester: grants.Identity{Issuer: "i", Subject: "a"}, Target: "t",
		Classes: grants.Classes{policies.ClassWrite}, Duration: time.Minute, Reason: "r"}); err != nil {
		t.Fatal(err)
	}
	r.none(t)
}

// TestNotifyingOnlyOnCreate: a failed create announces nothing, and the
// decorator still closes the store it wraps.
func TestNotifyingOnlyOnCreate(t *testing.T) {
	var got []string
	s := grants.Notifying(grants.NewEmbeddedStore(), notifyFunc(func(g grants.Grant) { got = append(got, g.ID) }))
	if _, err := s.Create(t.Context(), grants.Grant{Target: "t"}); err == nil {
		t.Fatal("invalid grant created")
	}
	if len(got) != 0 {
		t.Errorf("announced %v for a failed create", got)
	}
	if c, ok := s.(interface{ Close() error }); !ok || c.Close() != nil {
		t.Error("the decorated store does not close")
	}
}

type notifyFunc func(grants.Grant)

func (f notifyFunc) Notify(g grants.Grant) { f(g) }
