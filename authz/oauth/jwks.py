"""The issuers' keys, fetched and kept (the asynchronous edge of token validation).

For each trusted issuer the verifier finds its metadata (RFC 8414
`/.well-known/oauth-authorization-server`, then OpenID Connect Discovery
`/.well-known/openid-configuration`; for an issuer with a path, inserted before the path
first, then appended: `discovery_urls`), checks that the metadata names the same `issuer`,
fetches its `jwks_uri` and keeps the keys for `jwks_cache_seconds`.

- A token whose `kid` is not among the kept keys makes the verifier fetch the keys again,
  at most once per `jwks_refetch_seconds` per issuer: a rotated key is picked up, and a
  flood of made-up key ids costs the authorization server one request per interval.
  Within the interval such a token is refused (401 `invalid_token`).
- Fetches are shared: any number of requests waiting for one issuer's keys cause one
  fetch, which runs to its end even when the requests that waited for it are gone.
- Keys that cannot be had (the authorization server down, an error answer, metadata or a
  JWKS that cannot be read, no usable key) give `KeysUnavailable`: the request is answered
  503 and never allowed. A failed fetch is not tried again within
  `jwks_refetch_seconds`; kept keys past `jwks_cache_seconds` are never used.

Only issuer URLs, key counts and error types are logged, never a token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog

from authz.oauth.config import OAuthConfig
from authz.oauth.tokens import (
    TokenClaims,
    TokenHeader,
    TokenRejected,
    VerificationKey,
    keys_from_jwks,
    read_unverified,
    validate,
)

if TYPE_CHECKING:
    import httpx

__all__ = [
    "FETCH_TIMEOUT",
    "MAX_DOCUMENT_BYTES",
    "KeysUnavailable",
    "TokenVerifier",
    "discovery_urls",
]

log = structlog.get_logger("mcp_authz.oauth")

FETCH_TIMEOUT: Final = 2.0
"""Seconds one fetch of an issuer's keys (metadata and JWKS) may take in all."""
MAX_DOCUMENT_BYTES: Final = 512 * 1024
"""A longer metadata document or JWKS is refused."""


@dataclass(frozen=True, slots=True)
class KeysUnavailable:
    """The issuer's keys cannot be had, so the token cannot be checked: answered 503, and
    the request is never allowed. `reason` names the issuer and what failed."""

    reason: str


class _FetchError(Exception):
    pass


def discovery_urls(issuer: str) -> tuple[str, ...]:
    """Where an issuer's metadata may be, in the order tried: RFC 8414 (with the issuer's
    path inserted after `/.well-known/oauth-authorization-server`), then OpenID Connect
    Discovery inserted the same way, then appended to the issuer (OpenID Connect's own
    form; the same URL as the second for an issuer without a path)."""
    parts = urllib.parse.urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    urls = [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
        f"{issuer.rstrip('/')}/.well-known/openid-configuration",
    ]
    return tuple(dict.fromkeys(urls))


@dataclass
class _IssuerKeys:
    """What the verifier holds for one issuer."""

    keys: tuple[VerificationKey, ...] | None = None
    fetched_at: float = 0.0
    """When `keys` were fetched (monotonic)."""
    attempted_at: float | None = None
    """When the last fetch started (monotonic): no new one within the refetch interval."""
    failed: str | None = None
    """Why the last fetch failed (None: it succeeded)."""
    fetch: asyncio.Task[None] | None = None
    refreshed: int = field(default=0)
    """How many fetches have succeeded (for tests and logs)."""


class TokenVerifier:
    """Checks bearer JWTs against the trusted issuers' keys (one per process)."""

    def __init__(
        self,
        *,
        timeout: float = FETCH_TIMEOUT,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        """`clock` is the time tokens are judged at; `monotonic` times the cache; `client`
        fetches (an own `httpx.AsyncClient` when None, made at the first fetch)."""
        self._timeout = timeout
        self._clock = clock
        self._monotonic = monotonic
        self._client = client
        self._owns_client = client is None
        self._issuers: dict[str, _IssuerKeys] = {}

    def fetches(self, issuer: str) -> int:
        """How many fetches of `issuer`'s keys have succeeded."""
        state = self._issuers.get(issuer)
        return state.refreshed if state is not None else 0

    async def verify(
        self, config: OAuthConfig, token: str
    ) -> TokenClaims | TokenRejected | KeysUnavailable:
        """The verified claims of `token`, or why it is refused, or `KeysUnavailable`."""
        header = read_unverified(token, config)
        if isinstance(header, TokenRejected):
            return header
        keys = await self._keys(config, header.issuer)
        if isinstance(keys, KeysUnavailable):
            return keys
        key = _pick(keys, header)
        if key is None and header.kid is not None and not _has_kid(keys, header.kid):
            keys = await self._keys(config, header.issuer, unknown_kid=True)
            if isinstance(keys, KeysUnavailable):
                return keys
            key = _pick(keys, header)
        if key is None:
            return TokenRejected("no key of the issuer fits the token (kid and algorithm)")
        return validate(token, key, header, config, self._clock())

    def prefetch(self, config: OAuthConfig) -> None:
        """Start fetching every trusted issuer's keys that are not kept yet (in the
        background: the first token need not wait for them)."""
        for issuer in config.authorization_servers:
            state = self._issuers.setdefault(issuer, _IssuerKeys())
            if state.keys is None and state.fetch is None:
                state.fetch = asyncio.get_running_loop().create_task(
                    self._fetch_into(state, issuer, config)
                )

    async def aclose(self) -> None:
        for state in self._issuers.values():
            if state.fetch is not None:
                state.fetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await state.fetch
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    async def _keys(
        self, config: OAuthConfig, issuer: str, *, unknown_kid: bool = False
    ) -> tuple[VerificationKey, ...] | KeysUnavailable:
        """The issuer's keys: kept ones while fresh (and, for an unknown kid, while the
        refetch interval since the last fetch has not passed), else fetched once more."""
        state = self._issuers.setdefault(issuer, _IssuerKeys())
        now = self._monotonic()
        fresh = state.keys is not None and now - state.fetched_at < config.jwks_cache_seconds
        recent = (
            state.attempted_at is not None
            and now - state.attempted_at < config.jwks_refetch_seconds
        )
        if state.fetch is None:
            if fresh and (not unknown_kid or recent):
                assert state.keys is not None
                return state.keys
            if recent and state.failed is not None:
                return KeysUnavailable(state.failed)
            state.fetch = asyncio.get_running_loop().create_task(
                self._fetch_into(state, issuer, config)
            )
        if state.fetch is not None:
            # shielded: a request that goes away does not cancel the fetch others wait for
            with contextlib.suppress(Exception):
                await asyncio.shield(state.fetch)
        now = self._monotonic()
        if state.keys is not None and now - state.fetched_at < config.jwks_cache_seconds:
            return state.keys
        return KeysUnavailable(
            state.failed or f"the keys of {issuer} cannot be fetched; retry shortly"
        )

    async def _fetch_into(self, state: _IssuerKeys, issuer: str, config: OAuthConfig) -> None:
        state.attempted_at = self._monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                keys = await self._fetch(issuer)
        except (_FetchError, TimeoutError, OSError) as exc:
            message = str(exc) if isinstance(exc, _FetchError) else type(exc).__name__
            state.failed = f"the keys of {issuer} cannot be fetched ({message}); retry shortly"
            log.warning("jwks_fetch_failed", issuer=issuer, error=message)
        except Exception as exc:
            state.failed = f"the keys of {issuer} cannot be fetched; retry shortly"
            log.warning("jwks_fetch_failed", issuer=issuer, error=type(exc).__name__)
        else:
            state.keys = keys
            state.fetched_at = self._monotonic()
            state.failed = None
            state.refreshed += 1
            log.info("jwks_fetched", issuer=issuer, keys=len(keys))
        finally:
            state.fetch = None

    async def _fetch(self, issuer: str) -> tuple[VerificationKey, ...]:
        metadata: dict[str, Any] | None = None
        problems: list[str] = []
        for url in discovery_urls(issuer):
            try:
                found = await self._get_json(url)
            except _FetchError as exc:
                problems.append(str(exc))
                continue
            if not isinstance(found, dict):
                problems.append(f"{url}: not a JSON object")
                continue
            if found.get("issuer") != issuer:
                problems.append(f"{url}: names another issuer")
                continue
            metadata = found
            break
        if metadata is None:
            raise _FetchError("no metadata: " + "; ".join(problems))
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str) or urllib.parse.urlsplit(jwks_uri).scheme not in (
            "http",
            "https",
        ):
            raise _FetchError("the metadata has no http(s) jwks_uri")
        keys = keys_from_jwks(await self._get_json(jwks_uri))
        if not keys:
            raise _FetchError(f"{jwks_uri}: no usable signature key")
        return keys

    async def _get_json(self, url: str) -> Any:
        client = self._client
        if client is None:
            # imported here: a sidecar without oauth.json never loads httpx for this
            import httpx

            client = self._client = httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, trust_env=False
            )
        try:
            async with client.stream("GET", url, headers={"accept": "application/json"}) as got:
                if got.status_code != 200:
                    raise _FetchError(f"{url}: HTTP {got.status_code}")
                body = bytearray()
                async for chunk in got.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise _FetchError(f"{url}: longer than {MAX_DOCUMENT_BYTES} bytes")
        except _FetchError:
            raise
        except Exception as exc:  # connection refused, reset, timeout, a bad URL
            raise _FetchError(f"{url}: {type(exc).__name__}") from exc
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise _FetchError(f"{url}: not JSON") from None


def _has_kid(keys: tuple[VerificationKey, ...], kid: str) -> bool:
    return any(key.kid == kid for key in keys)


def _pick(keys: tuple[VerificationKey, ...], header: TokenHeader) -> VerificationKey | None:
    """The key named by the token's `kid` that fits its algorithm; for a token without a
    `kid`, the issuer's only key that fits it."""
    if header.kid is not None:
        return next((k for k in keys if k.kid == header.kid and k.fits(header.alg)), None)
    fitting = [key for key in keys if key.fits(header.alg)]
    return fitting[0] if len(fitting) == 1 else None
