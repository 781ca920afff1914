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
//
// # Audit
//
// Every Check answer is recorded (audit.go). An allow, a policy refusal
// and a refusal that opens an approval request are answered only once
// their event is durable; otherwise the answer is 503, the audit store is
// unavailable. The approval request itself is recorded (grant.requested)
// before it is opened, and not opened if that fails. Refusals sluice makes
// before or without a decision (unknown or disabled target, source, token,
// grant store, credential) are recorded best effort: they let nothing
// through, so a failed record does not turn them into anything else. An
// authentication refusal (authn) carries its reason, never the token.
//
// Envoy ends a Check at envoy.authz_timeout with its own, unexplained
// failure, so a Check's appends end a little before that (auditBudget),
// counted from the start of the Check, and sluice answers first.
package authz
