package authz

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/sluicehq/sluice/policies"
	"github.com/sluicehq/sluice/test/testenv"
)

func wantCode(t *testing.T, err error, code TokenErrorCode) {
	t.Helper()
	var te *TokenError
	if !errors.As(err, &te) {
		t.Fatalf("err = %v, want a TokenError %s", err, code)
	}
	if te.Code != code {
		t.Fatalf("code %s (%s), want %s", te.Code, te.Reason, code)
	}
}

func newIdP(t *testing.T) *testenv.OIDCProvider {
	idp := testenv.StartOIDC(t)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents", "eu"}})
	idp.AddClient(testenv.OIDCClient{ID: "copilot", Secret: "s2", Groups: []string{"agents"}, ActFor: "alice@example.com"})
	idp.AddClient(testenv.OIDCClient{ID: "other-aud", Secret: "s3", Audience: []string{"billing"}})
	idp.AddClient(testenv.OIDCClient{ID: "short", Secret: "s4", TTL: time.Minute})
	return idp
}

func issuerCfg(idp *testenv.OIDCProvider) policies.Issuer {
	return policies.Issuer{Issuer: idp.Issuer, Audiences: []string{"sluice"}, GroupsClaim: "groups"}
}

func TestVerifyRealTokens(t *testing.T) {
	idp, idp2 := newIdP(t), newIdP(t)
	v := NewVerifier([]policies.Issuer{issuerCfg(idp), issuerCfg(idp2)})
	ctx := context.Background()

	got, err := v.Verify(ctx, idp.Token(t, "agent-1"))
	if err != nil {
		t.Fatal(err)
	}
	p := got.Principal
	if p.Subject != "agent-1" || p.Issuer != idp.Issuer || strings.Join(p.Groups, ",") != "agents,eu" || p.Client != "agent-1" || p.OnBehalfOf != "" {
		t.Errorf("principal %+v", p)
	}
	if d := time.Until(got.Expiry); d < 4*time.Minute || d > 6*time.Minute {
		t.Errorf("expiry in %v, want about 5m", d)
	}

	// A delegated token names the human it acts for.
	got, err = v.Verify(ctx, idp.Token(t, "copilot"))
	if err != nil {
		t.Fatal(err)
	}
	if got.Principal.OnBehalfOf != "alice@example.com" {
		t.Errorf("on behalf of %q, want alice@example.com", got.Principal.OnBehalfOf)
	}

	// The second issuer is trusted too.
	got, err = v.Verify(ctx, idp2.Token(t, "agent-1"))
	if err != nil || got.Principal.Issuer != idp2.Issuer {
		t.Fatalf("second issuer: %+v %v", got, err)
	}
	if n := v.cache.len(); n != 3 {
		t.Errorf("cache holds %d tokens, want 3", n)
	}
}

func TestKeyRotation(t *testing.T) {
	idp := newIdP(t)
	v := NewVerifier([]policies.Issuer{issuerCfg(idp)}, WithTokenCache(0))
	ctx := context.Background()
	old := idp.Token(t, "agent-1")
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	idp.RotateKey()
	fresh := idp.Token(t, "agent-1")
	if h1, h2 := kid(t, old), kid(t, fresh); h1 == h2 {
		t.Fatalf("rotation did not change the key id (%s)", h1)
	}
	// A token signed with the new key is verified after a JWKS refresh...
	if _, err := v.Verify(ctx, fresh); err != nil {
		t.Fatalf("token signed with the rotated key: %v", err)
	}
	// ...and the old one still verifies while its key is published.
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatalf("old token while its key is still published: %v", err)
	}
	// A verifier that never saw the old key refuses it once it is dropped.
	idp.DropOldKeys()
	v2 := NewVerifier([]policies.Issuer{issuerCfg(idp)}, WithTokenCache(0))
	if _, err := v2.Verify(ctx, old); err == nil {
		t.Fatal("token signed with a dropped key was accepted")
	}
	if _, err := v2.Verify(ctx, fresh); err != nil {
		t.Fatal(err)
	}
}

func kid(t *testing.T, raw string) string {
	t.Helper()
	h, _ := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[0])
	var hdr struct{ Kid string }
	json.Unmarshal(h, &hdr)
	return hdr.Kid
}

func TestExpiryAndSkew(t *testing.T) {
	idp := newIdP(t)
	ctx := context.Background()
	tok := idp.Token(t, "short") // expires in 1m
	issued := time.Now()
	at := func(d time.Duration) *Verifier {
		return NewVerifier([]policies.Issuer{issuerCfg(idp)}, WithClock(func() time.Time { return issued.Add(d) }))
	}
	if _, err := at(time.Minute+10*time.Second).Verify(ctx, tok); err != nil {
		t.Errorf("10s past exp is within the 30s skew, got %v", err)
	}
	_, err := at(time.Minute+45*time.Second).Verify(ctx, tok)
	wantCode(t, err, TokenExpired)

	// The cache never serves a token past its expiry.
	clock := issued
	v := NewVerifier([]policies.Issuer{issuerCfg(idp)}, WithClock(func() time.Time { return clock }))
	if _, err := v.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	clock = issued.Add(2 * time.Minute)
	_, err = v.Verify(ctx, tok)
	wantCode(t, err, TokenExpired)
}

// TestBadTokens: every hostile or broken token is refused with its reason.
func TestBadTokens(t *testing.T) {
	idp, stranger := newIdP(t), newIdP(t)
	v := NewVerifier([]policies.Issuer{issuerCfg(idp)})
	ctx := context.Background()
	good := idp.Token(t, "agent-1")
	parts := strings.Split(good, ".")

	priv, keyID := idp.SigningKey()
	pubDER, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])

	hs256 := forge(t, map[string]any{"alg": "HS256", "kid": keyID, "typ": "JWT"}, payload, func(in []byte) []byte {
		m := hmac.New(sha256.New, pubPEM)
		m.Write(in)
		return m.Sum(nil)
	})
	none := forge(t, map[string]any{"alg": "none", "typ": "JWT"}, payload, func([]byte) []byte { return nil })
	var claims map[string]any
	json.Unmarshal(payload, &claims)
	claims["groups"] = []string{"dba-oncall"}
	elevated, _ := json.Marshal(claims)
	tampered := parts[0] + "." + base64.RawURLEncoding.EncodeToString(elevated) + "." + parts[2]

	// A token signed by a key the issuer never published.
	other, _ := stranger.SigningKey()
	signer, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: jose.JSONWebKey{Key: other, KeyID: keyID}}, nil)
	jws, _ := signer.Sign(payload)
	wrongKey, _ := jws.CompactSerialize()

	cases := []struct {
		name, token string
		code        TokenErrorCode
	}{
		{"empty", "", TokenMissing},
		{"not a jwt", "hunter2", TokenMalformed},
		{"garbage parts", "a.b.c", TokenMalformed},
		{"no iss", forge(t, map[string]any{"alg": "RS256"}, []byte(`{"sub":"x"}`), func([]byte) []byte { return []byte("sig") }), TokenMalformed},
		{"huge", strings.Repeat("a", maxTokenBytes+1), TokenMalformed},
		{"unknown issuer", stranger.Token(t, "agent-1"), TokenUnknownIssuer},
		{"other audience", idp.Token(t, "other-aud"), TokenWrongAudience},
		{"alg none", none, TokenInvalid},
		{"HS256 keyed with the public key", hs256, TokenInvalid},
		{"tampered claims", tampered, TokenInvalid},
		{"signed with a key the issuer never published", wrongKey, TokenInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := v.Verify(ctx, c.token)
			wantCode(t, err, c.code)
			if c.token != "" && strings.Contains(err.Error(), c.token) {
				t.Error("the error message contains the token")
			}
		})
	}
	if n := v.cache.len(); n != 0 {
		t.Errorf("refused tokens were cached (%d entries)", n)
	}
}

func forge(t *testing.T, header map[string]any, payload []byte, sign func([]byte) []byte) string {
	t.Helper()
	h, _ := json.Marshal(header)
	in := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(in)))
}

func TestIssuerDown(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	// Configure an issuer nobody answers for, and present a token naming it.
	down := policies.Issuer{Issuer: "http://" + addr, Audiences: []string{"sluice"}, GroupsClaim: "groups"}
	v := NewVerifier([]policies.Issuer{down})
	payload := []byte(`{"iss":"http://` + addr + `","sub":"x","aud":"sluice","exp":9999999999}`)
	fake := forge(t, map[string]any{"alg": "RS256"}, payload, func([]byte) []byte { return []byte("x") })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := v.Verify(ctx, fake)
	wantCode(t, err, TokenIssuerUnavailable)
	// The retry is paced: the next call answers at once with the same code.
	_, err = v.Verify(ctx, fake)
	wantCode(t, err, TokenIssuerUnavailable)
}

func BenchmarkVerifyCached(b *testing.B) {
	idp := testenv.StartOIDC(b)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	v := NewVerifier([]policies.Issuer{{Issuer: idp.Issuer, Audiences: []string{"sluice"}, GroupsClaim: "groups"}})
	tok := idp.Token(b, "agent-1")
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkVerifyUncached(b *testing.B) {
	idp := testenv.StartOIDC(b)
	idp.AddClient(testenv.OIDCClient{ID: "agent-1", Secret: "s1", Groups: []string{"agents"}})
	v := NewVerifier([]policies.Issuer{{Issuer: idp.Issuer, Audiences: []string{"sluice"}, GroupsClaim: "groups"}}, WithTokenCache(0))
	tok := idp.Token(b, "agent-1")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}
