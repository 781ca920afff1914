// Package authz decides who may do what: it verifies agents' OIDC tokens
// (identity.go), evaluates the decision (policies.Config.Decide) against
// just-in-time grants (authz/grants), and answers Envoy's ext_authz Check
// for HTTP and network connections.
//
// # Identity
//
// Agents present OIDC access tokens (JWTs): as a Bearer token over HTTP, or
// as the Postgres password. Verifier trusts the issuers of the config. For a
// token it:
//
//  1. reads iss from the unverified payload to choose the issuer (an
//     unknown issuer is refused here);
//  2. verifies signature, expiry (with DefaultClockSkew) and nbf through
//     go-oidc against the issuer's discovered JWKS, accepting only the
//     algorithms the issuer announces (so alg "none" and HS256 keyed with
//     the public key fail);
//  3. checks the audience against the issuer's configured audiences;
//  4. maps claims to a policies.Principal: sub, groups (the issuer's
//     groups_claim), client (azp or client_id) and the human an RFC 8693
//     act claim names.
//
// Verified tokens are cached by their SHA-256, least recently used out,
// and never past the token's expiry. Tokens never appear in logs or errors;
// TokenHash is the form that may.
//
// Refusals are *TokenError with a stable TokenErrorCode, which the edges
// translate: 401 with a JSON body over HTTP, FATAL 28P01/28000 on the
// Postgres wire.
package authz
