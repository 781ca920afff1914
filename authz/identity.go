package authz

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/sluicehq/sluice/policies"
)

// Identity limits, with why.
const (
	// DefaultClockSkew is how far past its exp a token is still accepted,
	// for clocks that disagree a little between the IdP and sluice.
	DefaultClockSkew = 30 * time.Second
	// discoveryRetry spaces out discovery attempts for an issuer that is
	// down, so a flood of connections does not become a flood at the IdP.
	discoveryRetry = 5 * time.Second
	// httpTimeout bounds one discovery or JWKS request.
	httpTimeout = 10 * time.Second
	// maxTokenBytes refuses absurd tokens before any parsing.
	maxTokenBytes = 16 << 10
)

// TokenErrorCode says why a token was refused; it is stable, so it is used
// as a metric label and in audit records.
type TokenErrorCode string

// Token error codes.
const (
	TokenMissing           TokenErrorCode = "token_missing"
	TokenMalformed         TokenErrorCode = "token_malformed"
	TokenUnknownIssuer     TokenErrorCode = "unknown_issuer"
	TokenIssuerUnavailable TokenErrorCode = "issuer_unavailable"
	TokenExpired           TokenErrorCode = "token_expired"
	TokenWrongAudience     TokenErrorCode = "wrong_audience"
	TokenInvalid           TokenErrorCode = "token_invalid"
)

// TokenError is a refused token. Its message is safe to show the agent: it
// never contains the token.
type TokenError struct {
	Code   TokenErrorCode
	Reason string
}

func (e *TokenError) Error() string { return string(e.Code) + ": " + e.Reason }

func tokenErr(code TokenErrorCode, format string, args ...any) *TokenError {
	return &TokenError{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// TokenHash is how a token appears in logs and audit records: never the
// token, only a short hash of it.
func TokenHash(raw string) string {
	sum := sha256.Sum256([]byte(raw))
	return hex.EncodeToString(sum[:8])
}

// Verifier verifies OIDC access tokens (JWTs) from several issuers and maps
// their claims to a policies.Principal. It is safe for concurrent use.
//
// Each issuer is discovered lazily (so sluice starts while an IdP is down,
// refusing its tokens until it is back), its JWKS is cached and re-fetched
// by go-oidc when a token names an unknown key id (key rotation), and only
// the algorithms its discovery document announces are accepted (so alg
// "none" and HS256-with-the-public-key are refused).
type Verifier struct {
	issuers map[string]*issuer
	cache   *tokenCache
	now     func() time.Time
	skew    time.Duration
	client  *http.Client
}

// VerifierOption configures a Verifier.
type VerifierOption func(*Verifier)

// WithClock injects the clock used for expiry and the cache.
func WithClock(now func() time.Time) VerifierOption { return func(v *Verifier) { v.now = now } }

// WithClockSkew sets how long past exp a token is still accepted.
func WithClockSkew(d time.Duration) VerifierOption { return func(v *Verifier) { v.skew = d } }

// WithTokenCache sets the verified-token cache size (0 disables it).
func WithTokenCache(entries int) VerifierOption {
	return func(v *Verifier) { v.cache = newTokenCache(entries) }
}

// NewVerifier trusts the given issuers.
func NewVerifier(issuers []policies.Issuer, opts ...VerifierOption) *Verifier {
	v := &Verifier{
		issuers: map[string]*issuer{},
		cache:   newTokenCache(DefaultTokenCacheEntries),
		now:     time.Now,
		skew:    DefaultClockSkew,
		client:  &http.Client{Timeout: httpTimeout},
	}
	for _, o := range opts {
		o(v)
	}
	for _, is := range issuers {
		v.issuers[is.Issuer] = &issuer{cfg: is}
	}
	return v
}

// Verified is a verified token's principal and expiry.
type Verified struct {
	Principal policies.Principal
	Expiry    time.Time
	// ValidUntil is when the verifier stops accepting the token: Expiry
	// plus the allowed clock skew. A session the token opened must stop at
	// the same instant, or a token just past exp would log in and then
	// have every statement refused.
	ValidUntil time.Time
}

// Verify checks raw and returns who it names. Errors are *TokenError.
func (v *Verifier) Verify(ctx context.Context, raw string) (Verified, error) {
	now := v.now()
	if raw == "" {
		return Verified{}, tokenErr(TokenMissing, "no token was presented")
	}
	if len(raw) > maxTokenBytes {
		return Verified{}, tokenErr(TokenMalformed, "token is longer than %d bytes", maxTokenBytes)
	}
	if got, ok := v.cache.get(raw, now); ok {
		return got, nil
	}
	iss, err := unverifiedIssuer(raw)
	if err != nil {
		return Verified{}, err
	}
	is, ok := v.issuers[iss]
	if !ok {
		return Verified{}, tokenErr(TokenUnknownIssuer, "tokens from issuer %q are not trusted", iss)
	}
	verifier, err := is.verifier(v)
	if err != nil {
		return Verified{}, err
	}
	tok, err := verifier.Verify(ctx, raw)
	if err != nil {
		var exp *oidc.TokenExpiredError
		if errors.As(err, &exp) {
			return Verified{}, tokenErr(TokenExpired, "token expired at %s", exp.Expiry.UTC().Format(time.RFC3339))
		}
		return Verified{}, tokenErr(TokenInvalid, "%s", strings.TrimPrefix(err.Error(), "oidc: "))
	}
	if !slices.ContainsFunc(tok.Audience, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }) {
		return Verified{}, tokenErr(TokenWrongAudience, "token is for audience %q, not for sluice (%s)", strings.Join(tok.Audience, ","), strings.Join(is.cfg.Audiences, ","))
	}
	p, err := principalFrom(tok, is.cfg)
	if err != nil {
		return Verified{}, err
	}
	out := Verified{Principal: p, Expiry: tok.Expiry, ValidUntil: tok.Expiry.Add(v.skew)}
	v.cache.put(raw, out, now)
	return out, nil
}

// issuer is one trusted issuer and its lazily discovered verifier.
type issuer struct {
	cfg policies.Issuer

	mu       sync.Mutex
	v        *oidc.IDTokenVerifier
	lastTry  time.Time
	lastFail error
}

func (is *issuer) verifier(v *Verifier) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	defer is.mu.Unlock()
	if is.v != nil {
		return is.v, nil
	}
	now := time.Now() // wall clock: retry pacing is real time, not token time
	if is.lastFail != nil && now.Sub(is.lastTry) < discoveryRetry {
		return nil, tokenErr(TokenIssuerUnavailable, "issuer %s is unavailable: %v", is.cfg.Issuer, is.lastFail)
	}
	is.lastTry = now
	// The context lives as long as the provider: go-oidc fetches the JWKS
	// with it whenever a new key id appears. The client's timeout bounds
	// each request.
	ctx := oidc.ClientContext(context.Background(), v.client)
	prov, err := oidc.NewProvider(ctx, is.cfg.Issuer)
	if err != nil {
		is.lastFail = err
		return nil, tokenErr(TokenIssuerUnavailable, "issuer %s is unavailable: %v", is.cfg.Issuer, err)
	}
	is.lastFail = nil
	is.v = prov.Verifier(&oidc.Config{
		// Audiences are checked by Verify against the configured list.
		SkipClientIDCheck: true,
		Now:               func() time.Time { return v.now().Add(-v.skew) },
	})
	return is.v, nil
}

// unverifiedIssuer reads iss from the payload to pick the verifier; the
// chosen verifier then checks the signature, so nothing here is trusted.
func unverifiedIssuer(raw string) (string, error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return "", tokenErr(TokenMalformed, "token is not a JWT (expected three dot-separated parts, got %d)", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", tokenErr(TokenMalformed, "token payload is not base64url")
	}
	var claims struct {
		Iss string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", tokenErr(TokenMalformed, "token payload is not a JSON object")
	}
	if claims.Iss == "" {
		return "", tokenErr(TokenMalformed, "token has no iss claim")
	}
	return claims.Iss, nil
}

// principalFrom maps verified claims to a principal.
func principalFrom(tok *oidc.IDToken, cfg policies.Issuer) (policies.Principal, error) {
	var claims map[string]json.RawMessage
	if err := tok.Claims(&claims); err != nil {
		return policies.Principal{}, tokenErr(TokenMalformed, "token claims: %v", err)
	}
	p := policies.Principal{Issuer: tok.Issuer, Subject: tok.Subject}
	if p.Subject == "" {
		return p, tokenErr(TokenMalformed, "token has no sub claim")
	}
	p.Groups = stringList(claims[cfg.GroupsClaim])
	for _, k := range []string{"azp", "client_id"} {
		if s := stringClaim(claims[k]); s != "" {
			p.Client = s
			break
		}
	}
	if act, ok := claims["act"]; ok {
		var a struct {
			Sub string `json:"sub"`
		}
		if json.Unmarshal(act, &a) == nil {
			p.OnBehalfOf = a.Sub
		}
	}
	return p, nil
}

func stringClaim(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// stringList accepts a JSON array of strings or one string (some IdPs send
// a single group as a string).
func stringList(raw json.RawMessage) []string {
	if len(raw) == 0 {
		return nil
	}
	var list []string
	if json.Unmarshal(raw, &list) == nil {
		return list
	}
	if s := stringClaim(raw); s != "" {
		return []string{s}
	}
	return nil
}
