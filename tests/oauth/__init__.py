"""The real OAuth authorization server (oidc-provider, server.mjs) and what tests do with it."""
