package grants

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"time"

	"github.com/sluicehq/sluice/policies"
)

// Notifier announces a new pending request to people who can decide it.
// Notify must not block: a grant request never waits for, or fails
// because of, its announcement.
type Notifier interface {
	Notify(g Grant)
}

// Notifying wraps s so that every request it creates is announced to n,
// wherever it was opened: the API, or a refusal in the ext_authz server.
// Only the replica that creates a request announces it, so approvers get
// one message per request however many replicas run.
func Notifying(s Store, n Notifier) Store { return &notifyingStore{Store: s, n: n} }

type notifyingStore struct {
	Store
	n Notifier
}

// Create creates, then announces what it created.
func (s *notifyingStore) Create(ctx context.Context, g Grant) (Grant, error) {
	out, err := s.Store.Create(ctx, g)
	if err == nil {
		s.n.Notify(out)
	}
	return out, err
}

// Close closes the wrapped store, if it has anything to close.
func (s *notifyingStore) Close() error {
	if c, ok := s.Store.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Webhook defaults.
const (
	DefaultWebhookQueue    = 100
	DefaultWebhookTimeout  = 5 * time.Second
	DefaultWebhookAttempts = 4
	DefaultWebhookBackoff  = time.Second
)

// WebhookOptions configures NewWebhook. Config is required.
type WebhookOptions struct {
	// Config returns the current config; approvers.webhook_url_env or
	// webhook_url_file names the URL, read at each send (so a rotated
	// secret or a reload takes effect at once). Unset means no webhook.
	Config func() *policies.Config
	// Client sends the POSTs (default: a client that follows no
	// redirects).
	Client *http.Client
	// Queue is how many announcements may wait; beyond it they are
	// dropped, and logged (default 100).
	Queue int
	// Timeout bounds one POST (default 5s).
	Timeout time.Duration
	// Attempts is how many times one announcement is tried (default 4).
	Attempts int
	// Backoff is the wait before the first retry, doubled after each
	// (default 1s).
	Backoff time.Duration
	Logger  *slog.Logger
}

// Webhook announces new pending requests as Slack-compatible JSON
// ({"text": ..., "blocks": [...]}) POSTed to the approvers' webhook URL.
// Notify queues; one goroutine, started by NewWebhook, sends until its
// context ends. The URL is a secret: it is never logged.
type Webhook struct {
	opts  WebhookOptions
	log   *slog.Logger
	queue chan Grant
}

var _ Notifier = (*Webhook)(nil)

// NewWebhook starts the sender; it stops when ctx ends, dropping what is
// still queued.
func NewWebhook(ctx context.Context, opts WebhookOptions) *Webhook {
	if opts.Config == nil {
		panic("grants.NewWebhook: Config is required")
	}
	if opts.Client == nil {
		opts.Client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	opts.Queue = cmp0(opts.Queue, DefaultWebhookQueue)
	opts.Timeout = cmp0(opts.Timeout, DefaultWebhookTimeout)
	opts.Attempts = cmp0(opts.Attempts, DefaultWebhookAttempts)
	opts.Backoff = cmp0(opts.Backoff, DefaultWebhookBackoff)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	w := &Webhook{opts: opts, log: opts.Logger, queue: make(chan Grant, opts.Queue)}
	go w.run(ctx)
	return w
}

func cmp0[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// Notify queues an announcement of g; when the queue is full it is
// dropped and logged rather than block the request.
func (w *Webhook) Notify(g Grant) {
	select {
	case w.queue <- g.clone():
	default:
		w.log.Warn("grant webhook queue is full; this request is not announced", "grant_id", g.ID, "queue", cap(w.queue))
	}
}

// run is the only sender: announcements go out in request order.
func (w *Webhook) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			if n := len(w.queue); n > 0 {
				w.log.Warn("grant webhook stopping; requests not announced", "count", n)
			}
			return
		case g := <-w.queue:
			w.announce(ctx, g)
		}
	}
}

// announce sends one message, retrying failures that may pass (network
// errors, 429 and 5xx) with a doubling backoff.
func (w *Webhook) announce(ctx context.Context, g Grant) {
	ref := w.ref()
	if ref.IsZero() {
		return
	}
	body, err := json.Marshal(slackMessage(g))
	if err != nil {
		w.log.Error("grant webhook: cannot encode the message", "grant_id", g.ID, "err", err)
		return
	}
	backoff := w.opts.Backoff
	for attempt := 1; ; attempt++ {
		// Resolved at each attempt: a secret file being rotated may be
		// briefly empty.
		target, err := ref.Resolve()
		if err == nil {
			err = w.post(ctx, target, body)
		}
		if err == nil {
			w.log.Debug("grant webhook sent", "grant_id", g.ID, "attempt", attempt)
			return
		}
		var perm permanentError
		if errors.As(err, &perm) || attempt >= w.opts.Attempts {
			w.log.Warn("grant webhook failed; the request is not announced", "grant_id", g.ID, "webhook", ref.String(), "attempts", attempt, "err", err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff *= 2
	}
}

func (w *Webhook) ref() policies.SecretRef {
	cfg := w.opts.Config()
	if cfg == nil {
		return policies.SecretRef{}
	}
	return policies.SecretRef{Env: cfg.Approvers.WebhookURLEnv, File: cfg.Approvers.WebhookURLFile}
}

// permanentError is a failure a retry cannot fix (a 4xx other than 429).
type permanentError struct{ error }

// post sends body to target. Its errors never contain target: net/http
// puts the URL into its errors, so they are unwrapped.
func (w *Webhook) post(ctx context.Context, target string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, target, bytes.NewReader(body))
	if err != nil {
		return permanentError{errors.New("the webhook URL is not a valid URL")}
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.opts.Client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			return ue.Err
		}
		return errors.New("request failed")
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return permanentError{fmt.Errorf("webhook answered %s", resp.Status)}
}
