"""Tell a person that a tool call is waiting for approval: one webhook POST per new approval.

The POST body is JSON::

    {"event": "approval.requested",
     "approval_id": "<id>", "tool": "<tool>", "grant_id": "<grant>", "expires_at": <epoch>,
     "approval": {... Approval.public(with_arguments=False) ...},
     "admin_path": "/approvals/<id>"}

(the top-level `approval_id`, `tool`, `grant_id` and `expires_at` repeat the approval's, for
receivers that template a chat message from flat fields).

Argument *values* never leave the sidecar this way (only their keys and sha256): the person
reads them through the authenticated admin API. With a secret, the header
``X-Mcp-Authz-Signature: sha256=<hex>`` carries the HMAC-SHA256 of the exact body bytes.

Delivery runs in background tasks (`notify` only schedules), retries connection errors,
429 and 5xx answers with a short backoff, and logs failures without the URL's path, the
secret or any argument. `drain` waits for deliveries in flight at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import urllib.parse
from collections.abc import Callable

import httpx
import structlog

from authz.approvals.base import Approval

__all__ = ["EVENT", "SIGNATURE_HEADER", "WebhookNotifier", "sign", "webhook_body"]

log = structlog.get_logger("mcp_authz.approvals.webhook")

EVENT = "approval.requested"
SIGNATURE_HEADER = "X-Mcp-Authz-Signature"


def webhook_body(approval: Approval) -> bytes:
    """The exact bytes POSTed for one new approval (no argument values)."""
    document = {
        "event": EVENT,
        "approval_id": approval.id,
        "tool": approval.tool,
        "grant_id": approval.grant_id,
        "expires_at": approval.expires_at,
        "approval": approval.public(with_arguments=False),
        "admin_path": f"/approvals/{approval.id}",
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` + hex HMAC-SHA256 of `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def _origin(url: str) -> str:
    """scheme://host[:port] only: a webhook URL's path or query may itself be a secret."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}"


class WebhookNotifier:
    """POSTs `approval.requested` events; `notify` is synchronous and only schedules."""

    def __init__(
        self,
        url: str,
        secret: str | None = None,
        timeout: float = 5.0,
        attempts: int = 3,
        *,
        backoff: float = 0.25,
        max_pending: int = 1000,
        concurrency: int = 4,
        on_result: Callable[[str], None] | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.url = url
        self._secret = secret or None
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._max_pending = max_pending
        self._concurrency = concurrency
        self._on_result = on_result
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None

    def describe(self) -> str:
        signed = "signed" if self._secret else "unsigned"
        return f"webhook {_origin(self.url)} ({signed})"

    @property
    def pending(self) -> int:
        """Deliveries scheduled and not finished."""
        return len(self._tasks)

    def notify(self, approval: Approval) -> None:
        """Schedule the POST for a new pending approval; never blocks, never raises."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            log.error("approval_webhook_failed", approval_id=approval.id, error="no event loop")
            self._result("dropped")
            return
        if len(self._tasks) >= self._max_pending:
            log.error(
                "approval_webhook_failed",
                approval_id=approval.id,
                error="too many deliveries pending; dropped",
                pending=len(self._tasks),
            )
            self._result("dropped")
            return
        task = loop.create_task(self._deliver(approval.id, webhook_body(approval)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _result(self, result: str) -> None:
        if self._on_result is not None:
            with contextlib.suppress(Exception):
                self._on_result(result)

    def _http(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        if self._client is None or self._semaphore is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout,
                follow_redirects=False,
                headers={"User-Agent": "mcp-authz"},
            )
            self._semaphore = asyncio.Semaphore(self._concurrency)
        return self._client, self._semaphore

    async def _deliver(self, approval_id: str, body: bytes) -> None:
        try:
            await self._post(approval_id, body)
        except Exception as exc:  # a background task must never die with a traceback
            log.error("approval_webhook_failed", approval_id=approval_id, error=type(exc).__name__)
            self._result("failed")

    async def _post(self, approval_id: str, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "X-Mcp-Authz-Event": EVENT}
        if self._secret is not None:
            headers[SIGNATURE_HEADER] = sign(self._secret, body)
        client, semaphore = self._http()
        async with semaphore:
            for attempt in range(1, self._attempts + 1):
                status: int | None = None
                error: str | None = None
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
        """Wait up to `timeout` seconds for deliveries in flight, then cancel the rest and
        close the HTTP client (a later `notify` opens a new one)."""
        tasks = set(self._tasks)
        if tasks:
            _done, left = await asyncio.wait(tasks, timeout=timeout)
            for task in left:
                task.cancel()
            if left:
                await asyncio.gather(*left, return_exceptions=True)
                log.warning("approval_webhook_failed", error="shutdown", cancelled=len(left))
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._semaphore = None
