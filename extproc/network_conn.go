package extproc

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	netextprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/network_ext_proc/v3"

	"github.com/sluicehq/sluice/authz"
	"github.com/sluicehq/sluice/filters/postgres"
	"github.com/sluicehq/sluice/policies"
)

// endAuditTimeout bounds the session-end Append, made after the stream's
// context has ended.
const endAuditTimeout = 5 * time.Second

// connection is one gRPC stream: the session and what the audit trail
// needs to know about it. Only the stream's goroutine touches it.
type connection struct {
	srv     *NetworkServer
	id      string
	log     *slog.Logger
	target  string
	source  string
	sess    *postgres.Session
	refused bool
	// key is the backend key registered for CancelRequests, if any.
	key       *postgres.BackendKey
	endReason string
	started   bool
}

// handle answers one request. It returns nil only for a request that
// carries no chunk, which Envoy never sends and which asks for nothing.
func (c *connection) handle(ctx context.Context, req *netextprocv3.ProcessingRequest) (resp *netextprocv3.ProcessingResponse) {
	defer func() {
		// A bug in one session must not take every connection down with
		// the process: that session is closed, fail closed.
		if r := recover(); r != nil {
			c.srv.log.Error("postgres session panicked; closing the connection", "panic", r, "target", c.target, "source", c.source)
			c.refused, c.endReason = true, fmt.Sprintf("internal error: %v", r)
			resp = closeResponse()
		}
	}()
	rd, wd := req.GetReadData(), req.GetWriteData()
	if rd == nil && wd == nil {
		return nil
	}
	if c.refused {
		return closeResponse()
	}
	if c.sess == nil {
		if reason := c.start(ctx, req); reason != "" {
			c.refused, c.endReason = true, reason
			c.srv.log.Warn("postgres connection refused", "reason", reason, "target", c.target, "source", c.source)
			return closeResponse()
		}
	}
	if rd != nil {
		r := c.sess.FromClient(ctx, rd.GetData(), rd.GetEndOfStream())
		c.note(r)
		return readResponse(r)
	}
	r := c.sess.FromServer(ctx, wd.GetData(), wd.GetEndOfStream())
	c.note(r)
	c.registerKey()
	return writeResponse(r)
}

func (c *connection) note(r postgres.Reply) {
	if r.Reason != "" {
		c.endReason = r.Reason
	}
}

// start learns the target from the forwarded ext_authz metadata and
// records the session's start. A non-empty result refuses the connection.
func (c *connection) start(ctx context.Context, req *netextprocv3.ProcessingRequest) string {
	c.id = newSessionID()
	md := req.GetMetadata().GetFilterMetadata()[MetadataNamespace]
	c.target = md.GetFields()["target"].GetStringValue()
	c.source = md.GetFields()["source"].GetStringValue()
	c.log = c.srv.log.With("session", c.id, "target", c.target, "source", c.source)
	if md == nil || c.target == "" {
		return "no target in the " + MetadataNamespace + " metadata (is sluice's ext_authz before ext_proc, and its namespace forwarded?)"
	}
	cfg := c.srv.cfg.Load()
	if cfg == nil {
		return "no configuration loaded yet"
	}
	t, ok := cfg.Target(c.target)
	if !ok || t.Kind != policies.KindPostgres {
		return fmt.Sprintf("target %q is not a postgres target in the running configuration", c.target)
	}
	if t.Disabled {
		return fmt.Sprintf("target %s is disabled", c.target)
	}
	actx, cancel := budgeted(ctx, cfg, false)
	err := c.srv.opts.Audit.Append(actx, sessionStartEvent(c.srv.opts.Now(), c.id, c.target, c.source))
	cancel()
	if err != nil {
		// Closed before a byte reaches the target: there is no write slot
		// to explain it in (the client sees the connection close), but
		// going on to the login for one would open a backend on the
		// target, and let its StartupMessage through, with nothing
		// recorded.
		return "audit: session start not recorded: " + err.Error()
	}
	c.started = true
	c.sess = postgres.New(postgres.Config{
		Target:    t.Name,
		SessionID: c.id,
		Upstream: postgres.Upstream{
			User: t.Credentials.User, Database: t.Database,
			Password:   t.Credentials.Password().Resolve,
			TLS:        t.UpstreamTLS(),
			ClientCert: t.Credentials.ClientCertFile != "",
		},
		Auth:    &authenticator{conn: c, cfg: cfg},
		Gate:    c.srv.opts.Gate,
		Cancels: c.srv.keys,
		SCRAM:   c.srv.scram,
	})
	c.log.Debug("postgres session started")
	return ""
}

// registerKey makes the session's backend key good for a CancelRequest
// once the session is authenticated and ready.
func (c *connection) registerKey() {
	if c.key != nil || !c.sess.Ready() {
		return
	}
	if k, ok := c.sess.BackendKey(); ok {
		c.key = &k
		c.srv.keys.Add(c.target, k)
	}
}

// end forgets the cancel key, records the results still streaming as
// incomplete and then the session's end.
func (c *connection) end() {
	if c.key != nil {
		c.srv.keys.Remove(c.target, *c.key)
	}
	if c.sess != nil {
		c.sess.End(c.endReason)
	}
	if !c.started {
		return
	}
	var p policies.Principal
	if id, ok := c.sess.Identity(); ok {
		p = id.Principal
	}
	ctx, cancel := context.WithTimeout(context.Background(), endAuditTimeout)
	defer cancel()
	if err := c.srv.opts.Audit.Append(ctx, sessionEndEvent(c.srv.opts.Now(), c.id, c.target, c.source, p, c.endReason)); err != nil {
		c.log.Error("audit: session end not recorded", "err", err)
	}
	c.log.Debug("postgres session ended", "reason", c.endReason, "phase", c.sess.Phase())
}

func newSessionID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// authenticator is the session's postgres.Authenticator: the token is
// verified by authz, the principal must be named by a policy on the
// target, and the outcome is recorded before it takes effect.
type authenticator struct {
	conn *connection
	cfg  *policies.Config
}

// Authenticate implements postgres.Authenticator.
//
// The authentication's record has a deadline below Envoy's ext_proc
// message timeout (auditBudget): a store that does not answer in time
// refuses the login in words.
func (a *authenticator) Authenticate(ctx context.Context, l postgres.Login) (postgres.Identity, error) {
	c := a.conn
	actx, cancel := budgeted(ctx, a.cfg, false)
	defer cancel()
	v, err := c.srv.opts.Verifier.Verify(ctx, l.Token)
	var refusal *postgres.AuthError
	if err != nil {
		refusal = tokenRefusal(err)
	} else if reason, ok := mayConnect(a.cfg, v.Principal, c.target); !ok {
		refusal = &postgres.AuthError{SQLState: postgres.SQLStateInvalidAuthorization, Reason: "sluice: " + reason}
	}
	ev := authnEvent(c.srv.opts.Now(), c.id, c.target, c.source, v.Principal, l, refusal)
	if err := c.srv.opts.Audit.Append(actx, ev); err != nil {
		c.log.Error("audit: authentication not recorded; refusing", "err", err)
		return postgres.Identity{}, &postgres.AuthError{SQLState: postgres.SQLStateAuditUnavailable,
			Reason: auditDownAtLogin, Detail: "The authentication could not be recorded.", Hint: "Try again later."}
	}
	if refusal != nil {
		c.log.Info("postgres login refused", "reason", refusal.Reason)
		return postgres.Identity{}, refusal
	}
	c.log.Info("postgres login", "subject", v.Principal.Subject, "client", v.Principal.Client)
	return postgres.Identity{Principal: v.Principal, Expiry: v.ValidUntil}, nil
}

// auditDownAtLogin is the refusal of a login sluice could not record
// (SQLSTATE 57P03, postgres.SQLStateAuditUnavailable: sluice's condition,
// not the agent's, and it may pass).
const auditDownAtLogin = "sluice: the audit trail is unavailable, so no session may start"

// tokenRefusal words a refused token for the agent: SQLSTATE 28P01, the
// verifier's reason (which never contains the token) and its stable code.
func tokenRefusal(err error) *postgres.AuthError {
	var te *authz.TokenError
	if errors.As(err, &te) {
		return &postgres.AuthError{SQLState: postgres.SQLStateInvalidPassword,
			Reason: "sluice: " + te.Reason, Detail: "token error: " + string(te.Code),
			Hint: "Send a current OIDC access token from a trusted issuer as the password."}
	}
	return &postgres.AuthError{SQLState: postgres.SQLStateInvalidPassword, Reason: "sluice: the token could not be verified: " + err.Error()}
}

// mayConnect reports whether any policy on the target names the
// principal. Statements are decided one by one later; a principal no
// policy names could run none, so it is refused at login (28000).
func mayConnect(cfg *policies.Config, p policies.Principal, target string) (string, bool) {
	d := cfg.Decide(policies.Request{Principal: p, Target: target, Classes: []policies.OperationClass{policies.ClassRead}}, nil)
	if len(d.Policies) == 0 {
		return d.Reason, false
	}
	return "", true
}

var _ postgres.Authenticator = (*authenticator)(nil)
