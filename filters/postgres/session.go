package postgres

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"

	"github.com/sluicehq/sluice/policies"
)

// Reply answers one chunk. Data goes on in the chunk's direction: towards
// the server for a client chunk, towards the client for a server chunk. It
// may be empty; it is never absent (design.md section 6, the balance rule).
type Reply struct {
	Data        []byte
	EndOfStream bool
	// Close ends the connection at once and without a word to the client;
	// Envoy drops Data. It is the answer only where no write slot exists
	// to say why (before the StartupMessage has reached the server).
	Close bool
	// Reason says why the session closed or ended, for logs and the audit
	// record; empty while the session goes on.
	Reason string
}

// Upstream is how sluice logs in to the target: the target's own role,
// database and password, which the agent never sees.
type Upstream struct {
	User     string
	Database string
	// Password resolves the target's password when the server asks for
	// one (trust and cert ask for none, so such a target needs none
	// configured).
	Password func() (string, error)
	// TLS is set when Envoy speaks TLS to the target: postgres_proxy
	// (upstream_ssl REQUIRE) keeps the client's StartupMessage and sends
	// the server an SSLRequest of its own, which is then the first client
	// chunk sluice sees; the server's one-byte answer is the write chunk
	// after it, and on 'S' postgres_proxy switches the upstream connection
	// to TLS and sends the StartupMessage on (envoy-contract.md section 5).
	TLS bool
	// ClientCert is set when Envoy presents the target a client
	// certificate. A server that accepts it (pg_hba.conf cert) answers the
	// StartupMessage with AuthenticationOk at once, which is recorded as
	// mode "cert" rather than "trust".
	ClientCert bool
}

// Config is what one session needs. Without Auth every login is refused,
// without Gate every statement is denied: a session never fails open.
type Config struct {
	// Target names the target in messages to the agent.
	Target string
	// SessionID links the session's statements in the audit trail.
	SessionID string
	Upstream  Upstream
	Auth      Authenticator
	Gate      Gate
	// Cancels knows the backend keys of authenticated sessions; nil drops
	// every CancelRequest.
	Cancels CancelKeys
	// SCRAM caches the target password's derived keys across sessions;
	// nil derives them for every login.
	SCRAM *SCRAMClients
	// Nonce returns a fresh random token for deny markers; tests fix it.
	Nonce func() string
	// Now is the clock a token's expiry is checked against (time.Now
	// when nil).
	Now func() time.Time
	// scramNonce fixes the SCRAM client nonce in tests.
	scramNonce func() string
}

// Session is one client connection as sluice sees it through Envoy's
// network ext_proc: two byte streams in, two rewritten byte streams out.
// It is not safe for concurrent use: the gRPC stream that owns it calls
// FromClient and FromServer from one goroutine, in the order Envoy sent
// the chunks.
type Session struct {
	cfg   Config
	phase phase
	mode  authMode

	client framer // client → server bytes (Envoy's read path)
	server framer // server → client bytes (Envoy's write path)
	// toServer and toClient collect one reply. Each is written only while
	// a chunk of the matching direction is answered: the client's chunk
	// is the only slot for bytes to the server, and the server's for bytes
	// to the client.
	toServer output
	toClient output
	// endClient and endServer are set once sluice has ended a direction;
	// every later reply of that direction is empty with end_of_stream.
	endClient, endServer bool
	reason               string

	// startup is what the client asked for, as it asked.
	startup map[string]string
	// probes are the negotiation requests already spent on the server,
	// which answers each kind once (ProcessStartupPacket).
	sslProbed, gssProbed bool
	// upstreamTLS is set once the server agreed to Envoy's SSLRequest
	// (Upstream.TLS): what follows is inside TLS below Envoy.
	upstreamTLS bool

	token    string
	identity Identity
	authed   bool
	password string
	salt     [4]byte
	scram    *scram.ClientConversation
	final    string
	// held are the server's startup messages in trust mode, kept from the
	// client until its token is verified; heldRFQ is set once the server's
	// own ReadyForQuery is among them.
	held    []byte
	heldRFQ bool
	authOK  bool
	// refusal is the FATAL the client gets when the failing upstream
	// handshake answers.
	refusal *pgproto3.ErrorResponse

	key      *BackendKey
	txStatus byte
	// awaiting counts the messages sent that the server answers with one
	// ReadyForQuery each (Query, Sync, FunctionCall) and has not yet. A
	// Query the server skips while it discards messages until Sync (after
	// an extended-protocol error) is never answered, so the count can only
	// err high, which merely keeps denials longer.
	awaiting int
	denials  []denial
	track    tracker
	memory   Memory
}

// New starts a session for one connection.
func New(cfg Config) *Session {
	if cfg.Nonce == nil {
		cfg.Nonce = randomNonce
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Auth == nil {
		cfg.Auth = refuseAll{}
	}
	if cfg.Gate == nil {
		cfg.Gate = GateFunc(func(context.Context, Statement) Verdict {
			return Deny("sluice: no statement gate is configured", "", "")
		})
	}
	s := &Session{cfg: cfg}
	s.track.now = cfg.Now
	s.client.expect = frameStartup
	s.client.max = maxAuthMessage
	s.server.max = maxMessage
	return s
}

func randomNonce() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// FromClient processes a chunk the client sent and returns what goes to
// the server in its place.
func (s *Session) FromClient(ctx context.Context, data []byte, eos bool) Reply {
	if s.endServer || s.phase == phaseEnded {
		return s.endedReply(true)
	}
	if s.phase == phaseUpstreamTLS && len(data) > 0 {
		// postgres_proxy drops out of sync on client bytes while it waits
		// for the server's answer, and would then pass that answer, and
		// everything after it, through unread: the client could speak TLS
		// to the target past sluice. Nothing may pass.
		r, _ := s.closeNow("client sent bytes while Envoy asked the target for TLS")
		return r
	}
	s.toServer.begin(aliasing(&s.client, data))
	s.client.push(data)
	for s.phase != phaseEnded {
		fr, ok, err := s.client.next()
		if err != nil {
			r, _ := s.closeNow(fmt.Sprintf("client: %v", err))
			return r
		}
		if !ok {
			break
		}
		if r, closed := s.onClient(ctx, fr); closed {
			return r
		}
	}
	s.client.retain()
	out := s.toServer.take()
	if s.phase == phaseEnded {
		// Sluice has told the client why; the server goes too.
		return s.endedReply(true)
	}
	return Reply{Data: out, EndOfStream: eos, Reason: s.reason}
}

// FromServer processes a chunk the server sent and returns what goes to
// the client in its place.
func (s *Session) FromServer(ctx context.Context, data []byte, eos bool) Reply {
	if s.endClient {
		return s.endedReply(false)
	}
	s.toClient.begin(aliasing(&s.server, data))
	s.server.push(data)
	for !s.endClient {
		fr, ok, err := s.server.next()
		if err != nil {
			s.endWith(fatal(codeProtocolViolation, fmt.Sprintf("sluice: the target sent bytes that are not the Postgres protocol: %v", err), "", ""))
			break
		}
		if !ok {
			break
		}
		s.onServer(ctx, fr)
	}
	if eos && !s.endClient {
		s.onServerEnd()
	}
	s.server.retain()
	out := s.toClient.take()
	return Reply{Data: out, EndOfStream: eos || s.endClient, Reason: s.reason}
}

// endedReply answers a chunk after sluice ended the session: nothing more
// passes, and end_of_stream closes that direction's half (repeating it is
// harmless; data after it is not).
func (s *Session) endedReply(toServer bool) Reply {
	if toServer {
		s.endServer = true
	}
	return Reply{Data: []byte{}, EndOfStream: true, Reason: s.reason}
}

// closeNow ends the connection without a write slot to explain it.
func (s *Session) closeNow(reason string) (Reply, bool) {
	s.phase, s.reason = phaseEnded, reason
	s.endClient, s.endServer = true, true
	return Reply{Data: []byte{}, Close: true, Reason: reason}, true
}

// endWith tells the client why in the current write slot, then ends both
// directions.
func (s *Session) endWith(e *pgproto3.ErrorResponse) {
	s.sendClient(e)
	s.phase = phaseEnded
	s.endClient = true
	s.reason = e.Message
}

func (s *Session) sendServer(m pgproto3.FrontendMessage) {
	out, err := m.Encode(s.toServer.materialize())
	if err != nil {
		// Only an over-long or NUL-carrying message fails to encode, and
		// everything sluice encodes was decoded within those limits.
		panic(fmt.Sprintf("postgres: encode %T: %v", m, err))
	}
	s.toServer.buf = out
}

func (s *Session) sendClient(m pgproto3.BackendMessage) {
	out, err := m.Encode(s.toClient.materialize())
	if err != nil {
		panic(fmt.Sprintf("postgres: encode %T: %v", m, err))
	}
	s.toClient.buf = out
}

// aliasing returns data when the framer will hand out frames that point
// into it (nothing of an earlier chunk is waiting), so that a reply can be
// the chunk itself.
func aliasing(f *framer, data []byte) []byte {
	if f.buffered() == 0 {
		return data
	}
	return nil
}

// onClient dispatches one client message by phase. closed is set when the
// connection must close with no word to the client.
func (s *Session) onClient(ctx context.Context, fr frame) (Reply, bool) {
	switch s.phase {
	case phaseStartup:
		return s.onStartupPacket(fr)
	case phaseClientToken, phaseClientTokenAgain:
		if fr.typ != 'p' {
			s.refuse(&AuthError{SQLState: codeProtocolViolation, Reason: fmt.Sprintf("sluice: expected a password message (your OIDC access token), got message type %q", fr.typ)})
			return Reply{}, false
		}
		s.onPasswordMessage(ctx, fr)
	case phaseReady:
		return s.onReadyClient(ctx, fr)
	case phaseRefusing, phaseCancel:
		// Nothing the client says counts any more.
	default:
		return s.closeNow(fmt.Sprintf("client sent message type %q while %s", fr.typ, s.phase))
	}
	return Reply{}, false
}

// onServer dispatches one server message by phase.
func (s *Session) onServer(ctx context.Context, fr frame) {
	switch s.phase {
	case phaseNegotiating:
		s.onNegotiationAnswer(fr)
	case phaseUpstreamTLS:
		s.onUpstreamTLSAnswer(fr)
	case phaseServerAuth:
		s.onAuthRequest(fr)
	case phaseClientToken, phaseTrustSync:
		s.onServerWhileClientAsked(fr)
	case phaseSCRAMContinue:
		s.onSCRAMContinue(fr)
	case phaseSCRAMFinal:
		s.onSCRAMFinal(fr)
	case phaseAuthResult:
		s.onAuthResult(fr)
	case phaseRefusing:
		s.onRefusingServer(fr)
	case phaseReady:
		s.onReadyServer(fr)
	default:
		s.endWith(fatal(codeProtocolViolation, fmt.Sprintf("sluice: the target sent message type %q while %s", fr.typ, s.phase), "", ""))
	}
}

// onServerEnd handles the server closing its side.
func (s *Session) onServerEnd() {
	switch s.phase {
	case phaseRefusing:
		s.endWith(s.refusal)
	case phaseReady:
		if s.reason == "" {
			s.reason = "target closed the connection"
		}
	case phaseEnded, phaseCancel, phaseStartup:
	default:
		s.endWith(fatal(codeConnectionFailure, fmt.Sprintf("sluice: target %s closed the connection during login", s.cfg.Target), "", ""))
	}
}

// End is called once the connection has ended, before its end is
// recorded: every run the server had not finished answering (rows still
// streaming when the client or Envoy closed the connection) is reported
// to its Finished hook as unfinished, with the rows and bytes that reached
// the client so far. Later calls report nothing.
func (s *Session) End(why string) {
	if why == "" {
		why = "the connection ended"
	}
	s.track.flush(why)
}

// Identity is who the session's token named, once authenticated.
func (s *Session) Identity() (Identity, bool) { return s.identity, s.authed }

// StartupParameters are the StartupMessage parameters as the client sent
// them (user and database are the agent's claims, not what reached the
// target).
func (s *Session) StartupParameters() map[string]string { return s.startup }

// BackendKey is the server's cancel key for this session, once the server
// sent it to an authenticated client.
func (s *Session) BackendKey() (BackendKey, bool) {
	if s.key == nil {
		return BackendKey{}, false
	}
	return *s.key, true
}

// TxStatus is the transaction status of the last ReadyForQuery ('I', 'T'
// or 'E'; 0 before the first).
func (s *Session) TxStatus() byte { return s.txStatus }

// Phase names where the session is, for logs.
func (s *Session) Phase() string { return s.phase.String() }

// Identity is a verified agent.
type Identity struct {
	Principal policies.Principal
	// Expiry is when the token stops being valid.
	Expiry time.Time
}

// Ready reports whether the login completed and statements flow.
func (s *Session) Ready() bool { return s.phase == phaseReady }

// refuseAll is the Authenticator of a session configured without one.
type refuseAll struct{}

func (refuseAll) Authenticate(context.Context, Login) (Identity, error) {
	return Identity{}, &AuthError{SQLState: codeInvalidAuthorization, Reason: "sluice: no authenticator is configured"}
}
