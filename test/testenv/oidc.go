package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// OIDCClient is a client-credentials client of the test provider and the
// claims its access tokens carry.
type OIDCClient struct {
	ID, Secret string
	// Audience of its access tokens (default ["sluice"]).
	Audience []string
	// Groups claim (omitted when empty).
	Groups []string
	// ActFor, when set, adds an RFC 8693 act claim naming that human.
	ActFor string
	// TTL of its access tokens (default 5m); negative issues expired tokens.
	TTL time.Duration
}

// OIDCProvider is a real OpenID provider on loopback (zitadel/oidc op)
// that issues JWT access tokens by the client-credentials grant, with key
// rotation under the test's control.
type OIDCProvider struct {
	// Issuer is the provider's issuer URL (http://127.0.0.1:PORT).
	Issuer string
	store  *opStorage
}

// StartOIDC starts a provider on 127.0.0.1 and stops it at cleanup.
func StartOIDC(t testing.TB) *OIDCProvider {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	issuer := "http://" + lis.Addr().String()
	st := &opStorage{clients: map[string]*OIDCClient{}}
	st.rotate()
	var key [32]byte
	rand.Read(key[:])
	provider, err := op.NewOpenIDProvider(issuer, &op.Config{CryptoKey: key, CodeMethodS256: true}, st, op.WithAllowInsecure())
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: provider, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })
	return &OIDCProvider{Issuer: issuer, store: st}
}

// AddClient registers a client-credentials client.
func (p *OIDCProvider) AddClient(c OIDCClient) {
	if len(c.Audience) == 0 {
		c.Audience = []string{"sluice"}
	}
	if c.TTL == 0 {
		c.TTL = 5 * time.Minute
	}
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	p.store.clients[c.ID] = &c
}

// Token obtains an access token for the client over the real token
// endpoint, as an agent would.
func (p *OIDCProvider) Token(t testing.TB, clientID string) string {
	t.Helper()
	tok, err := p.FetchToken(clientID)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// FetchToken is Token without a testing.TB, for benchmarks and goroutines.
func (p *OIDCProvider) FetchToken(clientID string) (string, error) {
	p.store.mu.Lock()
	c, ok := p.store.clients[clientID]
	p.store.mu.Unlock()
	if !ok {
		return "", fmt.Errorf("no client %q", clientID)
	}
	form := url.Values{"grant_type": {"client_credentials"}, "scope": {"openid"}}
	req, _ := http.NewRequest("POST", p.Issuer+"/oauth/token", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(url.QueryEscape(c.ID), url.QueryEscape(c.Secret))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	if body.AccessToken == "" {
		return "", fmt.Errorf("token endpoint: %d %s", resp.StatusCode, body.Error)
	}
	return body.AccessToken, nil
}

// RotateKey makes a new signing key current. The old public key stays in
// the JWKS (as real providers keep it while old tokens live) until
// DropOldKeys.
func (p *OIDCProvider) RotateKey() { p.store.rotate() }

// DropOldKeys removes every public key but the current one from the JWKS.
func (p *OIDCProvider) DropOldKeys() {
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	p.store.keys = p.store.keys[len(p.store.keys)-1:]
}

// SigningKey returns the current private key and its key id, for tests
// that forge tokens (for example HS256 keyed with the public key).
func (p *OIDCProvider) SigningKey() (*rsa.PrivateKey, string) {
	p.store.mu.Lock()
	defer p.store.mu.Unlock()
	k := p.store.keys[len(p.store.keys)-1]
	return k.priv, k.id
}

// rsaKey is one signing key generation.
type rsaKey struct {
	id   string
	priv *rsa.PrivateKey
}

func (k *rsaKey) SignatureAlgorithm() jose.SignatureAlgorithm { return jose.RS256 }
func (k *rsaKey) Algorithm() jose.SignatureAlgorithm          { return jose.RS256 }
func (k *rsaKey) ID() string                                  { return k.id }
func (k *rsaKey) Use() string                                 { return "sig" }

// signingKey and publicKey give op the private and public halves.
type signingKey struct{ *rsaKey }
type publicKey struct{ *rsaKey }

func (k signingKey) Key() any { return k.priv }
func (k publicKey) Key() any  { return &k.priv.PublicKey }

// opStorage is the provider's state: clients and keys. Only what the
// client-credentials grant, discovery and JWKS need is implemented; the
// rest answers "not supported".
type opStorage struct {
	mu      sync.Mutex
	clients map[string]*OIDCClient
	keys    []*rsaKey // last is current
}

func (s *opStorage) rotate() {
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	sum := sha256.Sum256(priv.PublicKey.N.Bytes())
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys = append(s.keys, &rsaKey{id: fmt.Sprintf("k%x", sum[:6]), priv: priv})
}

var errUnsupported = errors.New("not supported by the test provider")

func (s *opStorage) SigningKey(context.Context) (op.SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return signingKey{s.keys[len(s.keys)-1]}, nil
}

func (s *opStorage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{jose.RS256}, nil
}

func (s *opStorage) KeySet(context.Context) ([]op.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]op.Key, len(s.keys))
	for i, k := range s.keys {
		out[i] = publicKey{k}
	}
	return out, nil
}

func (s *opStorage) client(id string) (*OIDCClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.clients[id]
	if !ok {
		return nil, errors.New("unknown client")
	}
	return c, nil
}

func (s *opStorage) ClientCredentials(_ context.Context, id, secret string) (op.Client, error) {
	c, err := s.client(id)
	if err != nil || c.Secret != secret {
		return nil, errors.New("wrong client id or secret")
	}
	return opClient{c}, nil
}

// actorRequest is a client-credentials token request that may carry an
// act claim (op adds it for a TokenActorRequest).
type actorRequest struct {
	*oidc.JWTTokenRequest
	actor *oidc.ActorClaims
}

func (r actorRequest) GetActor() *oidc.ActorClaims { return r.actor }

func (s *opStorage) ClientCredentialsTokenRequest(_ context.Context, id string, scopes []string) (op.TokenRequest, error) {
	c, err := s.client(id)
	if err != nil {
		return nil, err
	}
	r := actorRequest{JWTTokenRequest: &oidc.JWTTokenRequest{Subject: c.ID, Audience: c.Audience, Scopes: scopes}}
	if c.ActFor != "" {
		r.actor = &oidc.ActorClaims{Subject: c.ActFor}
	}
	return r, nil
}

func (s *opStorage) CreateAccessToken(_ context.Context, req op.TokenRequest) (string, time.Time, error) {
	c, err := s.client(req.GetSubject())
	if err != nil {
		return "", time.Time{}, err
	}
	var id [12]byte
	rand.Read(id[:])
	return fmt.Sprintf("%x", id), time.Now().Add(c.TTL), nil
}

func (s *opStorage) GetPrivateClaimsFromScopes(_ context.Context, _, clientID string, _ []string) (map[string]any, error) {
	c, err := s.client(clientID)
	if err != nil {
		return nil, err
	}
	claims := map[string]any{}
	if len(c.Groups) > 0 {
		claims["groups"] = c.Groups
	}
	return claims, nil
}

func (s *opStorage) GetClientByClientID(_ context.Context, id string) (op.Client, error) {
	c, err := s.client(id)
	if err != nil {
		return nil, err
	}
	return opClient{c}, nil
}

func (s *opStorage) AuthorizeClientIDSecret(_ context.Context, id, secret string) error {
	_, err := s.ClientCredentials(context.Background(), id, secret)
	return err
}

func (s *opStorage) Health(context.Context) error { return nil }

// The rest of op.Storage is for grants the test provider does not offer.

func (s *opStorage) CreateAuthRequest(context.Context, *oidc.AuthRequest, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}
func (s *opStorage) AuthRequestByID(context.Context, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}
func (s *opStorage) AuthRequestByCode(context.Context, string) (op.AuthRequest, error) {
	return nil, errUnsupported
}
func (s *opStorage) SaveAuthCode(context.Context, string, string) error { return errUnsupported }
func (s *opStorage) DeleteAuthRequest(context.Context, string) error    { return errUnsupported }
func (s *opStorage) CreateAccessAndRefreshTokens(context.Context, op.TokenRequest, string) (string, string, time.Time, error) {
	return "", "", time.Time{}, errUnsupported
}
func (s *opStorage) TokenRequestByRefreshToken(context.Context, string) (op.RefreshTokenRequest, error) {
	return nil, errUnsupported
}
func (s *opStorage) TerminateSession(context.Context, string, string) error { return errUnsupported }
func (s *opStorage) RevokeToken(context.Context, string, string, string) *oidc.Error {
	return oidc.ErrUnsupportedGrantType()
}
func (s *opStorage) GetRefreshTokenInfo(context.Context, string, string) (string, string, error) {
	return "", "", errUnsupported
}
func (s *opStorage) SetUserinfoFromScopes(context.Context, *oidc.UserInfo, string, string, []string) error {
	return nil
}
func (s *opStorage) SetUserinfoFromToken(context.Context, *oidc.UserInfo, string, string, string) error {
	return errUnsupported
}
func (s *opStorage) SetIntrospectionFromToken(context.Context, *oidc.IntrospectionResponse, string, string, string) error {
	return errUnsupported
}
func (s *opStorage) GetKeyByIDAndClientID(context.Context, string, string) (*jose.JSONWebKey, error) {
	return nil, errUnsupported
}
func (s *opStorage) ValidateJWTProfileScopes(context.Context, string, []string) ([]string, error) {
	return nil, errUnsupported
}

// opClient adapts OIDCClient to op.Client: a confidential client allowed
// only the client-credentials grant, issuing JWT access tokens.
type opClient struct{ c *OIDCClient }

func (c opClient) GetID() string                       { return c.c.ID }
func (c opClient) RedirectURIs() []string              { return nil }
func (c opClient) PostLogoutRedirectURIs() []string    { return nil }
func (c opClient) ApplicationType() op.ApplicationType { return op.ApplicationTypeWeb }
func (c opClient) AuthMethod() oidc.AuthMethod         { return oidc.AuthMethodBasic }
func (c opClient) ResponseTypes() []oidc.ResponseType  { return nil }
func (c opClient) GrantTypes() []oidc.GrantType {
	return []oidc.GrantType{oidc.GrantTypeClientCredentials}
}
func (c opClient) LoginURL(string) string               { return "" }
func (c opClient) AccessTokenType() op.AccessTokenType  { return op.AccessTokenTypeJWT }
func (c opClient) IDTokenLifetime() time.Duration       { return time.Hour }
func (c opClient) DevMode() bool                        { return true }
func (c opClient) IsScopeAllowed(string) bool           { return true }
func (c opClient) IDTokenUserinfoClaimsAssertion() bool { return false }
func (c opClient) ClockSkew() time.Duration             { return 0 }
func (c opClient) RestrictAdditionalIdTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
func (c opClient) RestrictAdditionalAccessTokenScopes() func([]string) []string {
	return func(s []string) []string { return s }
}
