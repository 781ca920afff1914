package postgres

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Startup packet codes (libpq/pqcomm.h).
const (
	codeProtocol30    = pgproto3.ProtocolVersion30
	codeProtocol32    = pgproto3.ProtocolVersion32
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// onStartupPacket handles what a client sends first. There is no write
// slot yet (the server has said nothing), so a refusal here can only
// close the connection.
func (s *Session) onStartupPacket(fr frame) (Reply, bool) {
	if s.cfg.Upstream.TLS && !s.upstreamTLS {
		switch fr.code() {
		case codeSSLRequest:
			return s.onEnvoySSLRequest(fr)
		case codeProtocol30, codeProtocol32:
			// postgres_proxy always asks the server for TLS first, so this
			// StartupMessage would go to the target in clear text.
			return s.closeNow(fmt.Sprintf("target %s takes TLS from Envoy, but the StartupMessage came without postgres_proxy's SSLRequest (is its upstream_ssl REQUIRE?)", s.cfg.Target))
		}
	}
	if s.upstreamTLS && (fr.code() == codeSSLRequest || fr.code() == codeGSSENCRequest) {
		return s.closeNow("client asked for encryption after Envoy's TLS to the target was set up")
	}
	switch fr.code() {
	case codeSSLRequest, codeGSSENCRequest:
		return s.onNegotiationRequest(fr)
	case codeCancelRequest:
		return s.onCancelRequest(fr)
	case codeProtocol30, codeProtocol32:
		return s.onStartupMessage(fr)
	}
	return s.closeNow(fmt.Sprintf("client sent startup code %d, which is not a protocol sluice speaks", fr.code()))
}

// onEnvoySSLRequest passes postgres_proxy's own SSLRequest to the server.
// With Upstream.TLS the first SSLRequest can only be Envoy's: the target's
// listener terminates the client's TLS (policies require it), so a
// client's SSLRequest never gets past postgres_proxy.
func (s *Session) onEnvoySSLRequest(fr frame) (Reply, bool) {
	if len(fr.raw) != minStartupPacket || s.client.buffered() > 0 {
		// postgres_proxy injects its 8 bytes alone; more is a client
		// speaking out of turn (see FromClient).
		return s.closeNow("client sent bytes with Envoy's SSLRequest to the target")
	}
	s.toServer.pass(fr.raw)
	s.server.expect = frameByte
	s.phase = phaseUpstreamTLS
	return Reply{}, false
}

// onUpstreamTLSAnswer passes the server's answer to Envoy's SSLRequest on,
// as the single byte postgres_proxy reads (it is not a framed message, and
// any other length puts postgres_proxy out of sync). On 'S' postgres_proxy
// switches to TLS and sends the client's StartupMessage, the next client
// chunk. Anything else makes postgres_proxy close the connection: the
// client gets no word, since postgres_proxy consumes whatever this write
// chunk carries, and sluice ends the session with the reason.
func (s *Session) onUpstreamTLSAnswer(fr frame) {
	s.toClient.pass(fr.raw)
	s.server.expect = frameTyped
	if fr.typ != 'S' {
		s.phase = phaseEnded
		s.endClient, s.endServer = true, true
		s.reason = fmt.Sprintf("target %s refused TLS (answered the SSLRequest with %q)", s.cfg.Target, fr.typ)
		return
	}
	s.upstreamTLS = true
	s.phase = phaseStartup
}

// onNegotiationRequest answers a request for TLS or GSS encryption that
// reached sluice, which happens only when Envoy does not terminate TLS for
// the target. Sluice must read every byte, so the answer is always 'N'
// (continue in clear; postgres_proxy terminates TLS when the target has a
// certificate). The 'N' needs a write slot, and the server gives one by
// answering a negotiation request of its own: the server answers each kind
// once per connection and a server without TLS answers an SSLRequest 'N',
// so SSLRequest is spent first whatever the client asked.
func (s *Session) onNegotiationRequest(fr frame) (Reply, bool) {
	switch {
	case !s.sslProbed:
		s.sslProbed = true
		s.sendServer(&pgproto3.SSLRequest{})
	case !s.gssProbed:
		s.gssProbed = true
		s.sendServer(&pgproto3.GSSEncRequest{})
	default:
		return s.closeNow("client repeated an encryption request")
	}
	s.server.expect = frameByte
	s.phase = phaseNegotiating
	return Reply{}, false
}

// onNegotiationAnswer passes the server's 'N' on as the answer to the
// client's request. Any other answer means the server now expects a TLS or
// GSS handshake that sluice cannot make.
func (s *Session) onNegotiationAnswer(fr frame) {
	s.server.expect = frameTyped
	if fr.typ != 'N' && s.cfg.Upstream.TLS {
		// A client's GSSENCRequest, which postgres_proxy passes on
		// unread, and after which it would never ask the server for TLS.
		s.endWith(fatal(codeFeatureNotSupported,
			fmt.Sprintf("sluice: target %s takes TLS from Envoy only; connect without GSS encryption (gssencmode=disable)", s.cfg.Target), "", ""))
		return
	}
	if fr.typ != 'N' {
		s.endWith(fatal(codeFeatureNotSupported,
			fmt.Sprintf("sluice: target %s answered an encryption request with %q; sluice speaks to targets in clear only", s.cfg.Target, fr.typ), "", ""))
		return
	}
	s.toClient.add([]byte{'N'})
	s.phase = phaseStartup
}

// onCancelRequest forwards a cancel only with a key the server gave an
// authenticated session (design.md section 6): the request arrives on a
// fresh connection that proves nothing else. Either way the client expects
// the connection to close.
func (s *Session) onCancelRequest(fr frame) (Reply, bool) {
	var cr pgproto3.CancelRequest
	if err := cr.Decode(fr.body); err != nil {
		return s.closeNow(fmt.Sprintf("client sent a malformed CancelRequest: %v", err))
	}
	key := BackendKey{ProcessID: cr.ProcessID, Secret: string(cr.SecretKey)}
	if s.cfg.Cancels == nil || !s.cfg.Cancels.Known(s.cfg.Target, key) {
		return s.closeNow("client sent a CancelRequest with a key sluice did not see in an authenticated session")
	}
	s.toServer.pass(fr.raw)
	s.phase = phaseCancel
	s.reason = "cancel request forwarded"
	return Reply{}, false
}

// onStartupMessage records what the client asked for and sends the server
// the target's user and database instead.
func (s *Session) onStartupMessage(fr frame) (Reply, bool) {
	var sm pgproto3.StartupMessage
	if err := sm.Decode(fr.body); err != nil {
		return s.closeNow(fmt.Sprintf("client sent a malformed StartupMessage: %v", err))
	}
	if v, ok := sm.Parameters["replication"]; ok && !isFalse(v) {
		// A walsender streams the whole database past every gate.
		return s.closeNow("client asked for a replication connection")
	}
	if s.cfg.Upstream.User == "" {
		return s.closeNow(fmt.Sprintf("target %s has no credentials.user", s.cfg.Target))
	}
	s.startup = maps.Clone(sm.Parameters)
	up := maps.Clone(sm.Parameters)
	up["user"] = s.cfg.Upstream.User
	if s.cfg.Upstream.Database != "" {
		up["database"] = s.cfg.Upstream.Database
	} else {
		delete(up, "database") // the server defaults it to the user
	}
	s.toServer.add(encodeStartup(sm.ProtocolVersion, up))
	s.client.expect = frameTyped
	s.phase = phaseServerAuth
	return Reply{}, false
}

// isFalse reports whether a boolean startup parameter is off, spelled any
// way the server accepts (parse_bool).
func isFalse(v string) bool {
	switch strings.ToLower(v) {
	case "false", "off", "no", "0", "f", "n":
		return true
	}
	return false
}

// encodeStartup encodes a StartupMessage with its parameters in a fixed
// order: user and database first, as libpq sends them, then the rest by
// name. pgproto3's Encode ranges over the map, so the same login would
// reach the server as different bytes from one run to the next; sluice
// keeps its output a function of its input (replayable conversations, the
// fuzz tests' chunking equivalence). The values came from decoding, so
// none holds a NUL.
func encodeStartup(version uint32, params map[string]string) []byte {
	keys := slices.Sorted(maps.Keys(params))
	slices.SortStableFunc(keys, func(a, b string) int { return startupRank(a) - startupRank(b) })
	b := binary.BigEndian.AppendUint32(make([]byte, 4, 64), version)
	for _, k := range keys {
		b = append(append(append(append(b, k...), 0), params[k]...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

func startupRank(k string) int {
	switch k {
	case "user":
		return 0
	case "database":
		return 1
	}
	return 2
}
