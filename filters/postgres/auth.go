package postgres

import (
	"context"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgproto3"
)

// Authenticator verifies the agent's password, which is its OIDC access
// token, and says who it names. extproc implements it with authz's
// Verifier and records the authentication event; a refusal is an
// *AuthError.
type Authenticator interface {
	Authenticate(ctx context.Context, l Login) (Identity, error)
}

// Login is what an agent presented.
type Login struct {
	Token string
	// Startup is the client's StartupMessage parameters as it sent them.
	Startup map[string]string
	// Mode is the target's authentication method (trust, password, md5,
	// scram-sha-256, cert), for the record.
	Mode string
}

// AuthError is a refused login as the agent sees it: a FATAL ErrorResponse
// with this SQLSTATE and text. It never carries the token.
type AuthError struct {
	// SQLState is 28P01 for a bad or expired token, 28000 for a token that
	// is valid but whose principal may not use the target.
	SQLState string
	Reason   string
	Detail   string
	Hint     string
}

func (e *AuthError) Error() string { return e.SQLState + ": " + e.Reason }

// Refusal SQLSTATEs an Authenticator returns, exported for its use.
const (
	SQLStateInvalidPassword      = codeInvalidPassword
	SQLStateInvalidAuthorization = codeInvalidAuthorization
)

// refusedMechanism is the SASL mechanism sluice names to make a SCRAM
// target fail the handshake on purpose: the server answers any mechanism
// it did not offer with a FATAL, which becomes sluice's refusal.
const refusedMechanism = "sluice-refused"

// askPassword is the one authentication request every client gets: sluice
// needs the token in clear, whatever the target uses.
func (s *Session) askPassword() { s.sendClient(&pgproto3.AuthenticationCleartextPassword{}) }

// authType reads the subtype of an Authentication ('R') message.
func authType(fr frame) uint32 {
	if fr.typ != 'R' || len(fr.body) < 4 {
		return ^uint32(0)
	}
	return binary.BigEndian.Uint32(fr.body)
}

// onAuthRequest learns the target's authentication method from its first
// request and asks the client for its token instead.
func (s *Session) onAuthRequest(fr frame) {
	switch fr.typ {
	case 'E':
		s.endWith(s.upstreamRefused(decodeError(fr.body)))
		return
	case 'v', 'N': // NegotiateProtocolVersion, NoticeResponse: the client's business
		s.toClient.pass(fr.raw)
		return
	case 'R':
	default:
		s.endWith(s.unexpected(fr))
		return
	}
	switch authType(fr) {
	case pgproto3.AuthTypeOk:
		// trust or cert: the server is done; its messages wait until the
		// token is verified, and the Sync technique gives the write slot to
		// release them.
		s.mode = modeTrust
		if s.cfg.Upstream.ClientCert && s.upstreamTLS {
			s.mode = modeCert
		}
		s.authOK = true
		s.held = append(s.held, fr.raw...)
	case pgproto3.AuthTypeCleartextPassword:
		s.mode = modeCleartext
	case pgproto3.AuthTypeMD5Password:
		var m pgproto3.AuthenticationMD5Password
		if err := m.Decode(fr.body); err != nil {
			s.endWith(s.unexpected(fr))
			return
		}
		s.mode, s.salt = modeMD5, m.Salt
	case pgproto3.AuthTypeSASL:
		var m pgproto3.AuthenticationSASL
		if err := m.Decode(fr.body); err != nil || !slices.Contains(m.AuthMechanisms, scramMechanism) {
			s.endWith(fatal(codeFeatureNotSupported,
				fmt.Sprintf("sluice: target %s offers SASL mechanisms %v; sluice speaks %s", s.cfg.Target, m.AuthMechanisms, scramMechanism), "", ""))
			return
		}
		s.mode = modeSCRAM
	default:
		s.endWith(fatal(codeFeatureNotSupported,
			fmt.Sprintf("sluice: target %s asks for authentication method %d, which sluice does not support (trust, password, md5, scram-sha-256)", s.cfg.Target, authType(fr)), "", ""))
		return
	}
	if !s.mode.acceptedAtStartup() {
		// Resolved now, while there is a write slot to say it is missing.
		pw, err := s.resolvePassword()
		if err != nil {
			s.endWith(fatal(codeRejectedConnection,
				fmt.Sprintf("sluice: no password for target %s: %v", s.cfg.Target, err), "", "The operator must set the target's credentials.password_env or password_file."))
			return
		}
		s.password = pw
	}
	s.askPassword()
	s.phase = phaseClientToken
}

func (s *Session) resolvePassword() (string, error) {
	if s.cfg.Upstream.Password == nil {
		return "", errors.New("none is configured")
	}
	pw, err := s.cfg.Upstream.Password()
	if err == nil && pw == "" {
		err = errors.New("it is empty")
	}
	return pw, err
}

// onPasswordMessage takes the agent's token: verified the first time,
// compared the second (SCRAM's extra read slot). A verified token answers
// the server with the target's credentials, in the same read slot.
func (s *Session) onPasswordMessage(ctx context.Context, fr frame) {
	var pm pgproto3.PasswordMessage
	if err := pm.Decode(fr.body); err != nil {
		s.refuse(&AuthError{SQLState: codeProtocolViolation, Reason: "sluice: malformed password message"})
		return
	}
	if s.phase == phaseClientTokenAgain {
		if subtle.ConstantTimeCompare([]byte(pm.Password), []byte(s.token)) != 1 {
			s.refuse(&AuthError{SQLState: codeInvalidPassword, Reason: "sluice: the token sent the second time differs from the first"})
			return
		}
		s.sendServer(&pgproto3.SASLResponse{Data: []byte(s.final)})
		s.phase = phaseSCRAMFinal
		return
	}
	id, err := s.cfg.Auth.Authenticate(ctx, Login{Token: pm.Password, Startup: s.startup, Mode: s.mode.String()})
	if err != nil {
		var ae *AuthError
		if !errors.As(err, &ae) {
			ae = &AuthError{SQLState: codeInvalidAuthorization, Reason: "sluice: login refused: " + err.Error()}
		}
		s.refuse(ae)
		return
	}
	s.token, s.identity, s.authed = pm.Password, id, true
	switch s.mode {
	case modeTrust, modeCert:
		s.sendServer(&pgproto3.Sync{})
		s.phase = phaseTrustSync
	case modeCleartext:
		s.sendServer(&pgproto3.PasswordMessage{Password: s.password})
		s.phase = phaseAuthResult
	case modeMD5:
		s.sendServer(&pgproto3.PasswordMessage{Password: md5Password(s.cfg.Upstream.User, s.password, s.salt)})
		s.phase = phaseAuthResult
	case modeSCRAM:
		first, err := s.startSCRAM()
		if err != nil {
			s.refuse(&AuthError{SQLState: codeRejectedConnection, Reason: fmt.Sprintf("sluice: cannot start SCRAM with target %s: %v", s.cfg.Target, err)})
			return
		}
		s.sendServer(&pgproto3.SASLInitialResponse{AuthMechanism: scramMechanism, Data: []byte(first)})
		s.phase = phaseSCRAMContinue
	}
}

// refuse makes the upstream handshake fail on purpose, so that the
// server's answer is a write slot for sluice's FATAL (design.md section
// 6, "Bad token"). What fails it depends on what the server waits for:
//
//   - password or md5: an empty PasswordMessage, which the server refuses
//     as such (recv_password_packet: "empty password returned by client")
//     rather than as a wrong password for the target's role;
//   - SCRAM, first round: a SASL mechanism it did not offer;
//   - SCRAM, second round: a malformed client-final message;
//   - trust or cert: the server has already accepted; a Sync makes it
//     answer ReadyForQuery, and Terminate then ends the backend.
func (s *Session) refuse(e *AuthError) {
	s.refusal = fatal(e.SQLState, e.Reason, e.Detail, e.Hint)
	switch {
	case s.phase == phaseClientTokenAgain:
		s.sendServer(&pgproto3.SASLResponse{Data: []byte(refusedMechanism)})
	case s.mode.acceptedAtStartup():
		s.sendServer(&pgproto3.Sync{})
		s.sendServer(&pgproto3.Terminate{})
	case s.mode == modeSCRAM:
		s.sendServer(&pgproto3.SASLInitialResponse{AuthMechanism: refusedMechanism})
	default:
		s.sendServer(&pgproto3.PasswordMessage{Password: ""})
	}
	s.phase = phaseRefusing
}

// onRefusingServer turns the failed handshake's answer into the refusal.
// Nothing the server says reaches the client before it: not even an
// AuthenticationOk from a server that would accept the bogus credentials.
func (s *Session) onRefusingServer(fr frame) {
	switch fr.typ {
	case 'E':
		s.endWith(s.refusal)
	case 'Z':
		if s.mode.acceptedAtStartup() && !s.heldRFQ {
			s.heldRFQ = true // the server's own, not the Sync's answer
			return
		}
		s.endWith(s.refusal)
	}
}

// onServerWhileClientAsked handles the server speaking while the client
// is being asked for its token. Only in trust mode does it (the rest of
// its startup), and that is held; an error ends the login.
func (s *Session) onServerWhileClientAsked(fr frame) {
	if fr.typ == 'E' {
		s.endWith(s.upstreamRefused(decodeError(fr.body)))
		return
	}
	if !s.mode.acceptedAtStartup() {
		s.endWith(s.unexpected(fr))
		return
	}
	switch fr.typ {
	case 'Z':
		if !s.heldRFQ {
			s.heldRFQ = true
			s.held = append(s.held, fr.raw...)
			return
		}
		if s.phase != phaseTrustSync {
			s.endWith(s.unexpected(fr))
			return
		}
		// The Sync's answer: the write slot. The held messages end with
		// the server's own ReadyForQuery, so this one is dropped.
		s.txStatus = readyStatus(fr)
		s.toClient.add(s.held)
		s.held = nil
		s.phase = phaseReady
	case 'K':
		s.recordKey(fr)
		s.held = append(s.held, fr.raw...)
	case 'R':
		s.endWith(s.unexpected(fr))
	default:
		s.held = append(s.held, fr.raw...)
	}
}

// onAuthResult passes the server's side of a completed login on.
func (s *Session) onAuthResult(fr frame) {
	switch fr.typ {
	case 'R':
		if authType(fr) != pgproto3.AuthTypeOk {
			s.endWith(s.unexpected(fr))
			return
		}
		s.authOK = true
	case 'E':
		if !s.authOK {
			s.endWith(s.upstreamRefused(decodeError(fr.body)))
			return
		}
		// After AuthenticationOk (the database is gone, too many
		// connections): the server's own words, and it closes.
	case 'K':
		s.recordKey(fr)
	case 'Z':
		s.txStatus = readyStatus(fr)
		s.phase = phaseReady
	}
	s.toClient.pass(fr.raw)
}

func (s *Session) recordKey(fr frame) {
	var k pgproto3.BackendKeyData
	if k.Decode(fr.body) == nil {
		s.key = &BackendKey{ProcessID: k.ProcessID, Secret: string(k.SecretKey)}
	}
}

func readyStatus(fr frame) byte {
	if len(fr.body) != 1 {
		return 0
	}
	return fr.body[0]
}

// upstreamRefused words the target's refusal of sluice's own login: the
// agent's token was fine, the target or sluice's configuration is not.
func (s *Session) upstreamRefused(e *pgproto3.ErrorResponse) *pgproto3.ErrorResponse {
	code := e.Code
	if code == "" {
		code = codeRejectedConnection
	}
	return fatal(code, fmt.Sprintf("sluice: target %s refused the connection: %s", s.cfg.Target, e.Message), e.Detail, "")
}

func (s *Session) unexpected(fr frame) *pgproto3.ErrorResponse {
	return fatal(codeProtocolViolation, fmt.Sprintf("sluice: target %s sent message type %q (auth type %d) while %s", s.cfg.Target, fr.typ, authType(fr), s.phase), "", "")
}
