package postgres

import "fmt"

// phase is where a session is in the connection's life. doc.go draws the
// transitions.
type phase uint8

const (
	// phaseStartup: before the StartupMessage. The client may first ask
	// for TLS or GSS encryption, or send a CancelRequest instead.
	phaseStartup phase = iota
	// phaseNegotiating: an SSLRequest or GSSENCRequest is at the server;
	// its one-byte answer is awaited.
	phaseNegotiating
	// phaseUpstreamTLS: Envoy's own SSLRequest (Upstream.TLS) is at the
	// server; its one-byte answer is awaited, which postgres_proxy, not the
	// client, reads.
	phaseUpstreamTLS
	// phaseServerAuth: the StartupMessage (with the target's user and
	// database) is at the server; its authentication request is awaited.
	phaseServerAuth
	// phaseClientToken: the client was sent AuthenticationCleartextPassword;
	// its token is awaited. In trust mode the server's startup messages are
	// held meanwhile.
	phaseClientToken
	// phaseTrustSync: trust mode, token verified, a Sync is at the server;
	// its ReadyForQuery is the write slot that releases the held messages.
	phaseTrustSync
	// phaseSCRAMContinue: SASLInitialResponse sent; the server's
	// AuthenticationSASLContinue is awaited.
	phaseSCRAMContinue
	// phaseClientTokenAgain: the client was asked for its password a
	// second time, for the read slot that carries SCRAM's client-final
	// message.
	phaseClientTokenAgain
	// phaseSCRAMFinal: client-final sent; AuthenticationSASLFinal awaited.
	phaseSCRAMFinal
	// phaseAuthResult: the target's credentials are at the server;
	// AuthenticationOk through ReadyForQuery are awaited.
	phaseAuthResult
	// phaseRefusing: the login is refused and the upstream handshake was
	// made to fail; the server's answer becomes sluice's FATAL.
	phaseRefusing
	// phaseReady: authenticated; statements flow through the gate.
	phaseReady
	// phaseCancel: a CancelRequest with a known key went to the server,
	// which answers nothing and closes.
	phaseCancel
	// phaseEnded: sluice has ended the session; nothing more passes.
	phaseEnded
)

var phaseNames = [...]string{
	phaseStartup:          "startup",
	phaseNegotiating:      "negotiating",
	phaseUpstreamTLS:      "upstream_tls",
	phaseServerAuth:       "server_auth",
	phaseClientToken:      "client_token",
	phaseTrustSync:        "trust_sync",
	phaseSCRAMContinue:    "scram_continue",
	phaseClientTokenAgain: "client_token_again",
	phaseSCRAMFinal:       "scram_final",
	phaseAuthResult:       "auth_result",
	phaseRefusing:         "refusing",
	phaseReady:            "ready",
	phaseCancel:           "cancel",
	phaseEnded:            "ended",
}

func (p phase) String() string {
	if int(p) < len(phaseNames) {
		return phaseNames[p]
	}
	return fmt.Sprintf("phase(%d)", uint8(p))
}

// authMode is how the target authenticates sluice, learnt from the
// server's first authentication request.
type authMode uint8

const (
	modeUnknown authMode = iota
	modeTrust
	modeCleartext
	modeMD5
	modeSCRAM
	// modeCert: the server accepted Envoy's client certificate and sent
	// AuthenticationOk at once (pg_hba.conf cert); handled as trust.
	modeCert
)

// acceptedAtStartup reports whether the server accepted the login before
// sluice sent it anything: its startup messages are then held until the
// agent's token is verified (trust, cert).
func (m authMode) acceptedAtStartup() bool { return m == modeTrust || m == modeCert }

// AuthMode names a target's authentication method as pg_hba.conf does.
func (m authMode) String() string {
	switch m {
	case modeTrust:
		return "trust"
	case modeCleartext:
		return "password"
	case modeMD5:
		return "md5"
	case modeSCRAM:
		return "scram-sha-256"
	case modeCert:
		return "cert"
	}
	return "unknown"
}

// SQLSTATEs sluice answers with (Postgres errcodes.txt).
const (
	codeInvalidPassword       = "28P01" // invalid_password: a bad or expired token
	codeInvalidAuthorization  = "28000" // invalid_authorization_specification: a refused identity
	codeInsufficientPrivilege = "42501" // insufficient_privilege: a denied statement
	codeProtocolViolation     = "08P01" // protocol_violation
	codeConnectionFailure     = "08006" // connection_failure
	codeRejectedConnection    = "08004" // sqlserver_rejected_establishment_of_sqlconnection
	codeFeatureNotSupported   = "0A000" // feature_not_supported
	codeSyntaxError           = "42601" // syntax_error: what a denied Parse is turned into
	codeInFailedTransaction   = "25P02" // in_failed_sql_transaction
	codeProgramLimitExceeded  = "54000" // program_limit_exceeded: a result over max_rows/max_bytes
)
