"""MCP clients that sign in with OAuth, as the MCP Python SDK does it.

- `signed_in_client`: the SDK's `OAuthClientProvider` (authorization code + PKCE, dynamic
  registration), discovering everything from the 401. The person's part, the sign-in form
  of the authorization server, is done over HTTP by `SignIn`, as a browser would.
- `machine_client`: the SDK's `ClientCredentialsOAuthProvider` with a registered client.
- `token_for`: a token straight from the token endpoint (client credentials), for the tests
  that hand-craft the request (another audience, expiry, a rotated key).
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)

from authz.devstack.oauth import MachineClient

__all__ = [
    "REDIRECT_URI",
    "MemoryTokenStorage",
    "SignIn",
    "machine_client",
    "signed_in_client",
    "token_for",
]

REDIRECT_URI = "http://127.0.0.1:1/callback"
"""Where the authorization server sends the browser back; never fetched (SignIn stops at it)."""


@dataclass
class MemoryTokenStorage:
    """The SDK's `TokenStorage`, in memory; what it holds is what the client obtained."""

    tokens: OAuthToken | None = None
    client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class SignIn:
    """A person signing in on the authorization server's form, driven over HTTP.

    `redirect` is the SDK's redirect handler: it opens the authorization URL with a cookie
    jar of its own, follows the server's redirects, fills the sign-in form with the user's
    name and password, and stops at the redirect back to `REDIRECT_URI`; `callback` hands
    the code, state and issuer found there to the SDK.
    """

    username: str
    password: str
    visited: list[str] = field(default_factory=list)
    """Every URL the browser opened, in order (the authorization URL first)."""
    result: AuthorizationCodeResult | None = None

    async def redirect(self, authorization_url: str) -> None:
        self.visited.append(authorization_url)
        async with httpx2.AsyncClient(timeout=10) as browser:
            response = await browser.get(authorization_url)
            for _ in range(20):
                if response.status_code in (302, 303):
                    target = urllib.parse.urljoin(str(response.url), response.headers["location"])
                    if target.startswith(REDIRECT_URI):
                        self.result = _code_from(target)
                        return
                    self.visited.append(target)
                    response = await browser.get(target)
                elif response.status_code == 200 and "<form" in response.text:
                    action = re.search(r'<form method="post" action="([^"]+)"', response.text)
                    assert action, response.text
                    response = await browser.post(
                        urllib.parse.urljoin(str(response.url), action.group(1)),
                        data={"username": self.username, "password": self.password},
                    )
                else:
                    raise AssertionError(
                        f"sign-in stopped at {response.status_code}: {response.text}"
                    )
        raise AssertionError(f"sign-in never came back: {self.visited}")

    async def callback(self) -> AuthorizationCodeResult:
        assert self.result is not None, "the authorization server sent no code back"
        return self.result


def _code_from(url: str) -> AuthorizationCodeResult:
    query = urllib.parse.parse_qs(urllib.parse.urlparse(url).query)
    if "code" not in query:
        raise AssertionError(f"the authorization server answered with an error: {query}")
    return AuthorizationCodeResult(
        code=query["code"][0], state=query.get("state", [None])[0], iss=query.get("iss", [None])[0]
    )


ResponseHook = Callable[[httpx2.Response], Awaitable[None]]
"""Sees every response the client's HTTP client gets: the MCP endpoint's and those of
the OAuth flow (metadata, registration, token), which the SDK sends through it too."""


@asynccontextmanager
async def _session(
    url: str, auth: httpx2.Auth, *, mode: str, hooks: Sequence[ResponseHook]
) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(
        auth=auth, timeout=30, event_hooks={"response": list(hooks)}
    ) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode) as client:  # type: ignore[arg-type]
            yield client


@asynccontextmanager
async def signed_in_client(
    url: str,
    sign_in: SignIn,
    storage: MemoryTokenStorage,
    *,
    mode: str = "legacy",
    hooks: Sequence[ResponseHook] = (),
) -> AsyncIterator[Client]:
    """An MCP client that knows only `url`: the SDK discovers, registers and signs in."""
    provider = OAuthClientProvider(
        server_url=url,
        client_metadata=OAuthClientMetadata(
            client_name="mcp-authz e2e",
            redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=sign_in.redirect,
        callback_handler=sign_in.callback,
    )
    async with _session(url, provider, mode=mode, hooks=hooks) as client:
        yield client


@asynccontextmanager
async def machine_client(
    url: str,
    client: MachineClient,
    issuer: str,
    storage: MemoryTokenStorage,
    *,
    scope: str | None = None,
    mode: str = "legacy",
    hooks: Sequence[ResponseHook] = (),
) -> AsyncIterator[Client]:
    """An MCP client with client credentials: the SDK discovers the server and gets tokens."""
    provider = ClientCredentialsOAuthProvider(
        server_url=url,
        storage=storage,
        client_id=client.client_id,
        client_secret=client.client_secret,
        scope=scope,
        issuer=issuer,
    )
    async with _session(url, provider, mode=mode, hooks=hooks) as session:
        yield session


def token_for(
    issuer: str, client: MachineClient, *, resource: str | None, scope: str = "mcp:tools"
) -> dict[str, object]:
    """The token endpoint's answer to a client credentials request (raises on an error);
    without a `resource` (None or empty) oidc-provider issues an opaque token."""
    data = {"grant_type": "client_credentials", "scope": scope}
    if resource:
        data["resource"] = resource
    response = httpx2.post(
        f"{issuer}/token",
        data=data,
        auth=(client.client_id, client.client_secret),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer
