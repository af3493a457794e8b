"""MCP authorization: this endpoint as an OAuth 2.1 protected resource.

The public surface (what the pipeline, the server and the tests use):

- `authz.oauth.config`: `load_oauth(raw) -> OAuthConfig` (`oauth.json`, loaded with the
  rest of the configuration directory into `ConfigSet.oauth`, None without the file);
  `OAuthConfig.resource`, `.authorization_servers`, `.metadata_url` (the
  `resource_metadata` of challenges), `.metadata_paths` (where the document is served),
  `PRM_PATH`.
- `authz.oauth.metadata`: `protected_resource_metadata(config)` (the RFC 9728 document)
  and the `WWW-Authenticate` values: `missing_token_challenge`, `invalid_token_challenge`,
  `insufficient_scope_challenge(config, needed)`.
- `authz.oauth.tokens` (pure): `read_unverified(token)` → `TokenHeader` (alg, kid, iss:
  which issuer's keys to use) or `TokenRejected`; `validate(token, key, config, now)` →
  `TokenClaims` or `TokenRejected`; `looks_like_jwt(token)`; `TokenClaims.view()`, the
  claims a decision reads (`Grant.token`: iss, sub, client_id, scope, groups).
- `authz.oauth.jwks`: `TokenVerifier` (one per process): `await verify(config, token)` →
  `TokenClaims`, `TokenRejected` (401 invalid_token) or `KeysUnavailable` (the issuer's
  keys cannot be had: 503, never accepted); `prefetch(config)`; `aclose()`.

Grants (`grants.json`, `{"oauth": {"issuer", "sub", "client_id", "groups", "scope"}}`)
are in `authz.config.grants`; which credential of a request counts is decided in
`authz.pipeline.identity`; the challenge rides on `Verdict.challenge` and is rendered by
`authz.envoy.denial`.
"""

__all__: list[str] = []
