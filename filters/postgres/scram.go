package postgres

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

// The SCRAM client side is github.com/xdg-go/scram: pgconn's SCRAM code is
// internal to pgx and cannot be imported, and xdg-go/scram is the
// maintained implementation Go drivers use (the MongoDB driver among them),
// with RFC 5802/7677 test vectors, SASLprep, server-signature checking and
// a cache of derived keys. Hand-rolling the proof would be the one piece of
// cryptography in sluice nobody else reviews.

// scramMechanism is the only SASL mechanism sluice speaks upstream.
// SCRAM-SHA-256-PLUS needs channel binding to a TLS connection sluice does
// not hold (Envoy terminates and originates the TLS).
const scramMechanism = "SCRAM-SHA-256"

// scramCacheMax bounds SCRAMClients; it only grows when passwords rotate.
const scramCacheMax = 256

// maxSCRAMIterations bounds the PBKDF2 work a server can ask of sluice per
// login. Postgres stores 4096 by default (scram_iterations); a server
// asking for billions would hold the session's goroutine for minutes.
const maxSCRAMIterations = 1 << 20

// SCRAMClients keeps one SCRAM client per (user, password), so the
// PBKDF2-derived keys (4096 iterations of HMAC-SHA-256 by default) are
// computed once per target and salt rather than once per login. It is safe
// for concurrent use; a nil *SCRAMClients derives the keys every time.
type SCRAMClients struct {
	mu sync.Mutex
	m  map[[32]byte]*scram.Client
}

// NewSCRAMClients returns an empty cache.
func NewSCRAMClients() *SCRAMClients { return &SCRAMClients{m: map[[32]byte]*scram.Client{}} }

func (c *SCRAMClients) client(password string) (*scram.Client, error) {
	if c == nil {
		return newSCRAMClient(password)
	}
	key := sha256.Sum256([]byte(password))
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl, ok := c.m[key]; ok {
		return cl, nil
	}
	cl, err := newSCRAMClient(password)
	if err != nil {
		return nil, err
	}
	if len(c.m) >= scramCacheMax {
		clear(c.m)
	}
	c.m[key] = cl
	return cl, nil
}

// newSCRAMClient prepares the password as the server did when it stored
// the verifier: SASLprep, or the raw bytes when SASLprep refuses them
// (pg_saslprep's fallback for passwords that are not valid UTF-8 or
// contain prohibited characters). The user name is left empty, as libpq
// leaves it: the server takes the role from the StartupMessage.
func newSCRAMClient(password string) (*scram.Client, error) {
	cl, err := scram.SHA256.NewClient("", password, "")
	if err != nil {
		return scram.SHA256.NewClientUnprepped("", password, "")
	}
	return cl, nil
}

// startSCRAM begins the conversation and returns client-first-message.
func (s *Session) startSCRAM() (string, error) {
	cl, err := s.cfg.SCRAM.client(s.password)
	if err != nil {
		return "", err
	}
	if s.cfg.scramNonce != nil {
		cl = cl.WithNonceGenerator(s.cfg.scramNonce)
	}
	s.scram = cl.NewConversation()
	return s.scram.Step("")
}

// onSCRAMContinue computes client-final-message from the server's
// challenge and asks the client for its password again: client-final
// needs a read slot, and the client's second PasswordMessage is it.
func (s *Session) onSCRAMContinue(fr frame) {
	if fr.typ == 'E' {
		s.endWith(s.upstreamRefused(decodeError(fr.body)))
		return
	}
	var m pgproto3.AuthenticationSASLContinue
	if authType(fr) != pgproto3.AuthTypeSASLContinue || m.Decode(fr.body) != nil {
		s.endWith(s.unexpected(fr))
		return
	}
	final, err := "", scramIterations(string(m.Data))
	if err == nil {
		final, err = s.scram.Step(string(m.Data))
	}
	if err != nil {
		s.endWith(fatal(codeRejectedConnection, fmt.Sprintf("sluice: SCRAM with target %s failed: %v", s.cfg.Target, err), "", ""))
		return
	}
	s.final = final
	s.askPassword()
	s.phase = phaseClientTokenAgain
}

// onSCRAMFinal checks the server's signature, which proves the server
// knows the password's verifier, and drops the message: the client never
// started a SASL exchange. AuthenticationOk follows.
func (s *Session) onSCRAMFinal(fr frame) {
	if fr.typ == 'E' {
		s.endWith(s.upstreamRefused(decodeError(fr.body)))
		return
	}
	var m pgproto3.AuthenticationSASLFinal
	if authType(fr) != pgproto3.AuthTypeSASLFinal || m.Decode(fr.body) != nil {
		s.endWith(s.unexpected(fr))
		return
	}
	if _, err := s.scram.Step(string(m.Data)); err != nil || !s.scram.Valid() {
		s.endWith(fatal(codeRejectedConnection, fmt.Sprintf("sluice: target %s did not prove it knows the password (SCRAM server signature): %v", s.cfg.Target, err), "", ""))
		return
	}
	s.phase = phaseAuthResult
}

// md5Password is the md5 method's answer: "md5" followed by
// hex(md5(hex(md5(password || user)) || salt)) (auth.c, pg_md5_encrypt).
func md5Password(user, password string, salt [4]byte) string {
	inner := md5.Sum([]byte(password + user))
	h := hex.EncodeToString(inner[:])
	outer := md5.Sum(append([]byte(h), salt[:]...))
	return "md5" + hex.EncodeToString(outer[:])
}

// scramIterations refuses a server-first-message that asks for more
// PBKDF2 iterations than maxSCRAMIterations; xdg-go/scram checks the rest.
func scramIterations(serverFirst string) error {
	for _, attr := range strings.Split(serverFirst, ",") {
		if v, ok := strings.CutPrefix(attr, "i="); ok {
			n, err := strconv.Atoi(v)
			if err == nil && n > maxSCRAMIterations {
				return fmt.Errorf("server asks for %d PBKDF2 iterations, more than sluice's limit of %d", n, maxSCRAMIterations)
			}
		}
	}
	return nil
}
