"""Tell a person that a tool call is waiting for approval: one webhook POST per new approval.

The POST body is JSON::

    {"event": "approval.requested",
     "approval_id": "<id>", "grant_id": "<grant>", "expires_at": <epoch>,
     "admin_path": "/approvals/<id>",
     "approval": {"id", "status", "grant_id", "grant_label", "policy", "policy_hash",
                  "rule", "requested_at", "expires_at", "decision_id",
                  "arguments_hmac", "argument_count"},
     "untrusted": {"warning": "...", "tool": "<escaped>", "argument_keys": ["<escaped>", ...],
                   "argument_keys_omitted": <n>}}

Everything outside `untrusted` comes from the sidecar and its configuration. `untrusted`
holds what the agent chose: the tool name it called and its argument keys. Each of those
strings is escaped (`escape_untrusted`: percent-encoding of every character but ASCII
letters, digits and `-._~`, at most `UNTRUSTED_MAX_CHARS` characters, then `...`), so a
key like `URGENT: approve at http://evil.example/` reaches the receiver as
`URGENT%3A%20approve%20at%20http%3A%2F%2Fevil.example%2F`: no link, no markup, no line
break. At most `UNTRUSTED_MAX_KEYS` keys are listed. Receivers must show these strings as
plain text (code), never as markup or links. The approver reads the exact call through the
authenticated admin API.

Argument *values* never leave the sidecar this way. `arguments_hmac` is the HMAC-SHA256 of
the canonical arguments under the server's digest key: it tells equal calls apart without
letting anyone recover small values by hashing guesses.

**Signing** follows Standard Webhooks (https://www.standardwebhooks.com/), through the
`standardwebhooks` library: every POST carries `webhook-id` (`msg_<approval id>`, the same
on every attempt, so receivers can drop a repeat) and `webhook-timestamp` (the attempt's
time, in seconds); with a secret, `webhook-signature: v1,<base64 HMAC-SHA256 of
"<id>.<timestamp>.<body>">`, signed anew per attempt. A receiver verifies it with
`standardwebhooks.Webhook(secret).verify(body, headers)`, which also refuses a timestamp
more than 5 minutes away (a replayed POST). The secret (`webhook_key`) is either a Standard
Webhooks secret, `whsec_` and base64 of the key bytes, or, as before, any other string,
whose UTF-8 bytes are the key (its `whsec_` form is `whsec_` + base64 of those bytes). For
one more release the body-only ``X-Mcp-Authz-Signature: sha256=<hex>`` (HMAC-SHA256 of the
exact body under the UTF-8 bytes of the configured string) is sent too; it has no timestamp
and so no replay protection.

**Delivery is fair per grant.** Each grant has its own queue of at most
`max_pending_per_grant` notices; `concurrency` workers take the next notice from the grants
in turn (round-robin), so a grant that floods the queue delays and drops only its own
notices, never another grant's. `notify` only enqueues; deliveries retry connection errors,
429 and 5xx answers with a short backoff, and log failures without the URL's path, the
secret or any argument. `drain` waits for deliveries in flight at shutdown.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import datetime
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

import httpx
import standardwebhooks
import structlog

from authz.model import Approval

__all__ = [
    "EVENT",
    "SIGNATURE_HEADER",
    "STANDARD_KEY_MIN_BYTES",
    "STANDARD_SECRET_PREFIX",
    "UNTRUSTED_MAX_CHARS",
    "UNTRUSTED_MAX_KEYS",
    "UNTRUSTED_WARNING",
    "WebhookNotifier",
    "escape_untrusted",
    "sign",
    "webhook_body",
    "webhook_id",
    "webhook_key",
]

log = structlog.get_logger("mcp_authz.approvals.webhook")

EVENT = "approval.requested"
SIGNATURE_HEADER = "X-Mcp-Authz-Signature"
"""The body-only HMAC of earlier releases; sent beside the Standard Webhooks headers."""
STANDARD_SECRET_PREFIX: Final = "whsec_"
STANDARD_KEY_MIN_BYTES: Final = 24
"""Shortest key a `whsec_` secret may decode to (Standard Webhooks: 24 to 64 bytes)."""
UNTRUSTED_MAX_CHARS: Final = 64
"""Characters of one untrusted string shown (before escaping); longer ones end in `...`."""
UNTRUSTED_MAX_KEYS: Final = 32
"""Argument keys listed at most; the rest are counted in `argument_keys_omitted`."""
UNTRUSTED_WARNING: Final = (
    "Chosen by the agent whose call is held, percent-encoded. Show as plain text, never as "
    "markup or links, and do not follow instructions in it; read the call itself through "
    "the admin API."
)


def escape_untrusted(text: str, max_chars: int = UNTRUSTED_MAX_CHARS) -> str:
    """An agent-chosen string as it may be shown: percent-encoded (UTF-8), every character
    but ASCII letters, digits and `-._~`; cut at `max_chars` characters, marked by `...`."""
    shown = urllib.parse.quote(text[:max_chars], safe="", errors="surrogatepass")
    return shown + ("..." if len(text) > max_chars else "")


def webhook_body(approval: Approval) -> bytes:
    """The exact bytes POSTed for one new approval (no argument values; what the agent
    chose only in the escaped `untrusted` part)."""
    keys = list(approval.argument_keys)
    document: dict[str, Any] = {
        "event": EVENT,
        "approval_id": approval.id,
        "grant_id": approval.grant_id,
        "expires_at": approval.expires_at,
        "admin_path": f"/approvals/{approval.id}",
        "approval": {
            "id": approval.id,
            "status": approval.status.value,
            "grant_id": approval.grant_id,
            "grant_label": approval.grant_label,
            "policy": approval.policy,
            "policy_hash": approval.policy_hash,
            "rule": approval.rule,
            "requested_at": approval.requested_at,
            "expires_at": approval.expires_at,
            "decision_id": approval.decision_id,
            "arguments_hmac": approval.arguments_hmac,
            "argument_count": len(keys),
        },
        "untrusted": {
            "warning": UNTRUSTED_WARNING,
            "tool": escape_untrusted(approval.tool),
            "argument_keys": [escape_untrusted(k) for k in keys[:UNTRUSTED_MAX_KEYS]],
            "argument_keys_omitted": max(0, len(keys) - UNTRUSTED_MAX_KEYS),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(secret: str, body: bytes) -> str:
    """The legacy `X-Mcp-Authz-Signature` value: `sha256=` + hex HMAC-SHA256 of `body` under
    the UTF-8 bytes of `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def webhook_key(secret: str) -> bytes:
    """The Standard Webhooks signing key of a configured secret: the base64-decoded part of
    a `whsec_` secret, else the secret's UTF-8 bytes (how earlier releases keyed the HMAC).
    Raises ValueError for a `whsec_` secret that is not base64 of at least
    `STANDARD_KEY_MIN_BYTES` bytes."""
    if not secret:
        raise ValueError("the webhook secret is empty")
    if not secret.startswith(STANDARD_SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(STANDARD_SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ secret must be whsec_ followed by base64") from None
    if len(key) < STANDARD_KEY_MIN_BYTES:
        raise ValueError(
            f"a whsec_ secret must decode to at least {STANDARD_KEY_MIN_BYTES} bytes "
            "(e.g. whsec_$(openssl rand -base64 32))"
        )
    return key


def webhook_id(approval_id: str) -> str:
    """The `webhook-id` of the event announcing one approval: the same on every attempt."""
    return f"msg_{approval_id}"


def _origin(url: str) -> str:
    """scheme://host[:port] only: a webhook URL's path or query may itself be a secret."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


class WebhookNotifier:
    """POSTs `approval.requested` events from per-grant queues, round-robin; `notify` is
    synchronous and only enqueues."""

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        *,
        backoff: float = 0.25,
        max_pending_per_grant: int = 100,
        concurrency: int = 4,
        on_result: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`secret`: see `webhook_key` (ValueError when it is not a usable secret);
        `clock`: the time written in `webhook-timestamp`."""
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if max_pending_per_grant < 1 or concurrency < 1:
            raise ValueError("max_pending_per_grant and concurrency must be at least 1")
        self.url = url
        self._secret = secret or None
        self._signer = standardwebhooks.Webhook(webhook_key(self._secret)) if self._secret else None
        self._clock = clock
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._max_per_grant = max_pending_per_grant
        self._concurrency = concurrency
        self._on_result = on_result
        self._queues: dict[str, collections.deque[tuple[str, bytes]]] = {}
        """Grant id → its notices not yet taken by a worker: (approval id, body)."""
        self._turns: collections.deque[str] = collections.deque()
        """Grants with queued notices, in the order they get their next turn."""
        self._workers: set[asyncio.Task[None]] = set()
        self._in_flight = 0
        self._client: httpx.AsyncClient | None = None

    def describe(self) -> str:
        signed = "signed" if self._secret else "unsigned"
        return f"webhook {_origin(self.url)} ({signed})"

    @property
    def pending(self) -> int:
        """Deliveries queued or in flight."""
        return sum(len(q) for q in self._queues.values()) + self._in_flight

    def queued(self, grant_id: str) -> int:
        """Notices of one grant waiting for a worker."""
        queue = self._queues.get(grant_id)
        return len(queue) if queue is not None else 0

    def notify(self, approval: Approval) -> None:
        """Queue the POST for a new pending approval; never blocks, never raises."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("approval_webhook_failed", approval_id=approval.id, error="no event loop")
            self._result("dropped")
            return
        grant = approval.grant_id
        queue = self._queues.get(grant)
        if queue is None:
            queue = self._queues[grant] = collections.deque()
            self._turns.append(grant)
        if len(queue) >= self._max_per_grant:
            log.error(
                "approval_webhook_failed",
                approval_id=approval.id,
                grant_id=grant,
                error="too many deliveries pending for this grant; dropped",
                pending=len(queue),
            )
            self._result("dropped")
            return
        queue.append((approval.id, webhook_body(approval)))
        while len(self._workers) < self._concurrency:
            worker = loop.create_task(self._work())
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)

    def _next(self) -> tuple[str, bytes] | None:
        """The next notice, from the grant whose turn it is (then it goes to the back)."""
        while self._turns:
            grant = self._turns.popleft()
            queue = self._queues.get(grant)
            if not queue:
                self._queues.pop(grant, None)
                continue
            item = queue.popleft()
            if queue:
                self._turns.append(grant)
            else:
                del self._queues[grant]
            return item
        return None

    async def _work(self) -> None:
        while (item := self._next()) is not None:
            self._in_flight += 1
            try:
                await self._deliver(*item)
            finally:
                self._in_flight -= 1

    def _result(self, result: str) -> None:
        if self._on_result is not None:
            with contextlib.suppress(Exception):
                self._on_result(result)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                headers={"User-Agent": "mcp-authz"},
            )
        return self._client

    async def _deliver(self, approval_id: str, body: bytes) -> None:
        try:
            await self._post(approval_id, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a worker must never die with a traceback
            log.error("approval_webhook_failed", approval_id=approval_id, error=type(exc).__name__)
            self._result("failed")

    def _headers(self, approval_id: str, body: bytes) -> dict[str, str]:
        """One attempt's headers: the Standard Webhooks id, timestamp and (with a secret)
        signature, signed at this attempt's time, and the legacy body-only signature."""
        message_id = webhook_id(approval_id)
        sent_at = datetime.datetime.fromtimestamp(int(self._clock()), tz=datetime.UTC)
        headers = {
            "Content-Type": "application/json",
            "X-Mcp-Authz-Event": EVENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
        }
        if self._secret is not None and self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(
                message_id, sent_at, body.decode("ascii")
            )
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        return headers

    async def _post(self, approval_id: str, body: bytes) -> None:
        client = self._http()
        for attempt in range(1, self._attempts + 1):
            status: int | None = None
            error: str | None = None
            headers = self._headers(approval_id, body)
            try:
                response = await client.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:  # connection refused, timeouts, protocol errors
                error = type(exc).__name__
                retry = True
            else:
                status = response.status_code
                if 200 <= status < 300:
                    log.info("approval_webhook_sent", approval_id=approval_id, status=status)
                    self._result("sent")
                    return
                retry = status >= 500 or status == 429
            will_retry = retry and attempt < self._attempts
            log.warning(
                "approval_webhook_failed",
                approval_id=approval_id,
                webhook=_origin(self.url),
                attempt=attempt,
                attempts=self._attempts,
                status=status,
                error=error,
                will_retry=will_retry,
            )
            if not will_retry:
                break
            await asyncio.sleep(self._backoff * 2 ** (attempt - 1))
        self._result("failed")

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` seconds for the queued and in-flight deliveries, then cancel
        the rest and close the HTTP client (a later `notify` opens a new one)."""
        workers = set(self._workers)
        if workers:
            _done, left = await asyncio.wait(workers, timeout=timeout)
            unsent = sum(len(q) for q in self._queues.values()) + self._in_flight
            for task in left:
                task.cancel()
            if left:
                await asyncio.gather(*left, return_exceptions=True)
                log.warning("approval_webhook_failed", error="shutdown", cancelled=unsent)
        self._queues.clear()
        self._turns.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
