"""The admin API for approvals: list, show, approve and deny held tool calls.

Mounted on the sidecar's admin HTTP server (see :mod:`authz.server`)::

    GET  /approvals[?status=pending|approved|denied|used|expired|all][&limit=N][&after=C]
    GET  /approvals/{id}
    POST /approvals/{id}/approve      body (optional): {"reason": "..."}
    POST /approvals/{id}/deny         body: {"reason": "..."} (required)

Every route needs ``Authorization: Bearer <approver token>`` of an approver in
``approvers.json``; agents' grant tokens are not approver tokens. The approver's id from
that credential is recorded as ``decided_by`` (never a name from a header or the body).

An approval is *stale* when its grant no longer exists, now uses another policy, or that
policy's content hash differs from the one the call was held under: it cannot be approved
(409), since the approved call could never run; it can still be denied.

A listing is one page, oldest first: at most ``limit`` approvals (default
``LIST_LIMIT``, at most ``LIST_LIMIT_MAX``) and ``next``, the cursor to pass as ``after`` for
the following page (null on the last one).

Errors are JSON ``{"error": "..."}`` naming the field: 400 bad body, 401 no or unknown
credential, 404 unknown id, 405 wrong method, 409 not pending / expired / stale, 413 body
too large, 503 the approval store cannot answer.
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from authz.approvals.base import (
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalStore,
    ApprovalStoreUnavailable,
    format_cursor,
    parse_cursor,
)
from authz.audit import log_approval
from authz.config.approvers import APPROVERS_FILE, Approver
from authz.config.grants import bearer_token
from authz.config.source import ConfigSet, ConfigSource
from authz.metrics import Metrics
from authz.model import Approval, ApprovalStatus, Cursor, Grant

__all__ = [
    "LIST_LIMIT",
    "LIST_LIMIT_MAX",
    "MAX_BODY_BYTES",
    "REALM",
    "REASON_MAX",
    "STALE_MESSAGE",
    "approval_routes",
    "stale_reason",
]

log = structlog.get_logger("mcp_authz.approvals.admin")

REALM = 'Bearer realm="mcp-authz-admin"'
MAX_BODY_BYTES = 64 * 1024
LIST_LIMIT = 50
"""Approvals on one page of `GET /approvals` unless `limit` says otherwise."""
LIST_LIMIT_MAX = 200
"""The largest `limit` (each approval on a page carries up to 64 KiB of argument values)."""
REASON_MAX = 1000
STALE_MESSAGE = (
    "the policy changed since this call was held; it cannot be approved, "
    "the agent's next call will be judged by the new policy"
)
STATUS_FILTERS: Mapping[str, tuple[ApprovalStatus, ...]] = {
    "pending": (ApprovalStatus.PENDING,),
    "approved": (ApprovalStatus.APPROVED,),
    "denied": (ApprovalStatus.DENIED,),
    "used": (ApprovalStatus.USED,),
    "expired": (ApprovalStatus.EXPIRED,),
    "all": (),
}

_APPROVAL_ID = re.compile(r"apr_[0-9a-f]{1,64}")
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_NO_STORE = {"Cache-Control": "no-store"}


class _Refusal(Exception):
    """An error answer: HTTP status, message and extra headers / fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"error": self.message, **self.extra},
            status_code=self.status,
            headers={**_NO_STORE, **self.headers},
        )


def _grants_by_id(config: ConfigSet) -> dict[str, Grant]:
    grants = config.grants
    found: dict[str, Grant] = {}
    for grant in grants.by_hash.values():
        found[grant.id] = grant
    for grant in grants.by_spiffe_id.values():
        found[grant.id] = grant
    for _matcher, grant in grants.jwt_grants:
        found[grant.id] = grant
    return found


def stale_reason(
    config: ConfigSet, approval: Approval, grants: Mapping[str, Grant] | None = None
) -> str | None:
    """Why `approval` can no longer be approved under `config`, or None when it still can:
    its grant is gone, uses another policy, or that policy's content changed."""
    grant = (grants if grants is not None else _grants_by_id(config)).get(approval.grant_id)
    if grant is None:
        return f"grant {approval.grant_id!r} no longer exists"
    if grant.policy != approval.policy:
        return f"grant {grant.id!r} now uses policy {grant.policy!r}, not {approval.policy!r}"
    policy = config.policy(grant.policy)
    if policy is None:
        return f"policy {grant.policy!r} is no longer loaded"
    if policy.content_hash != approval.policy_hash:
        return (
            f"policy {policy.name!r} changed (sha256 {approval.policy_hash[:12]}… → "
            f"{policy.content_hash[:12]}…)"
        )
    return None


def _present(
    approval: Approval, config: ConfigSet, grants: Mapping[str, Grant] | None = None
) -> dict[str, Any]:
    out = approval.public(with_arguments=True)
    out["stale"] = stale_reason(config, approval, grants) is not None
    return out


def _bad_text(value: str) -> str | None:
    """Why a reason cannot be stored (control/format characters, lone surrogates), or None."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate escape"
    if any(unicodedata.category(c) in ("Cc", "Cf") for c in value):
        return "must be one line of text without control or formatting characters"
    return None


def _parse_reason(raw: bytes, *, required: bool) -> str | None:
    """The `reason` of an approve/deny body; raises _Refusal(400) naming the field."""
    if not raw.strip():
        if required:
            raise _Refusal(400, 'reason: required; send a JSON body {"reason": "..."}')
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _Refusal(400, f"body: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise _Refusal(400, 'body: must be a JSON object like {"reason": "..."}')
    unknown = sorted(set(data) - {"reason"})
    if unknown:
        raise _Refusal(400, f'{unknown[0]}: unknown field; the body has only "reason"')
    reason = data.get("reason")
    if reason is None:
        if required:
            raise _Refusal(400, "reason: required (a non-empty string)")
        return None
    if not isinstance(reason, str):
        raise _Refusal(400, "reason: must be a string")
    if len(reason) > REASON_MAX:
        raise _Refusal(400, f"reason: at most {REASON_MAX} characters (got {len(reason)})")
    problem = _bad_text(reason)
    if problem is not None:
        raise _Refusal(400, f"reason: {problem}")
    reason = reason.strip()
    if not reason:
        if required:
            raise _Refusal(400, "reason: must not be empty")
        return None
    return reason


def _parse_limit(raw: str | None) -> int:
    if raw is None:
        return LIST_LIMIT
    if not raw.isdigit() or not 1 <= int(raw) <= LIST_LIMIT_MAX:
        raise _Refusal(400, f"limit: must be a whole number from 1 to {LIST_LIMIT_MAX}")
    return int(raw)


def _parse_after(raw: str | None) -> Cursor | None:
    if raw is None:
        return None
    cursor = parse_cursor(raw)
    if cursor is None:
        raise _Refusal(400, "after: not a cursor; pass the `next` of the previous page")
    return cursor


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise _Refusal(400, "Content-Length: not a number")
        if int(length) > MAX_BODY_BYTES:
            raise _Refusal(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _Refusal(413, f"body: larger than {MAX_BODY_BYTES} bytes")
    return bytes(body)


Handler = Callable[[Request, Approver], Awaitable[Response]]


class _ApprovalsApi:
    def __init__(
        self,
        config: ConfigSource,
        store: ApprovalStore,
        metrics: Metrics | None,
        clock: Callable[[], float],
        allow_remote: bool = False,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.allow_remote = allow_remote

    # -- plumbing -------------------------------------------------------------------

    def authenticate(self, request: Request) -> Approver:
        approvers = self.config.current.approvers
        client = request.client.host if request.client else None
        if not self.allow_remote and not _is_loopback(client):
            # the TCP peer, never a header: deployments bind the admin listener to every
            # interface for probes and scrapes, approvers still come in over loopback
            log.warning("approval_admin_refused", reason="not loopback", client=client)
            raise _Refusal(
                403,
                "the approvals API answers loopback clients only: use it from the sidecar's "
                "host or pod (kubectl port-forward, docker compose exec), or start the "
                "sidecar with --approvals-remote",
            )
        if len(approvers) == 0:
            log.warning("approval_admin_unauthorized", reason="no approvers", client=client)
            raise _Refusal(
                401,
                f"no approvers are configured: add {APPROVERS_FILE} to the configuration "
                "directory (mcp-authz approver add --config DIR --id NAME)",
                headers={"WWW-Authenticate": REALM},
            )
        header = request.headers.get("authorization")
        token = bearer_token(header)
        if token is None:
            log.warning("approval_admin_unauthorized", reason="no bearer token", client=client)
            raise _Refusal(
                401,
                "missing bearer token: send Authorization: Bearer <approver token>",
                headers={"WWW-Authenticate": REALM},
            )
        approver = approvers.lookup(token)
        if approver is None:
            log.warning("approval_admin_unauthorized", reason="unknown token", client=client)
            raise _Refusal(
                401,
                f"unknown approver token (approver tokens are listed in {APPROVERS_FILE}; "
                "agents' grant tokens are not accepted)",
                headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
            )
        return approver

    def endpoint(self, method: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            try:
                approver = self.authenticate(request)
                if request.method != method:
                    raise _Refusal(
                        405,
                        f"method {request.method} not allowed; use {method}",
                        headers={"Allow": method},
                    )
                return await handler(request, approver)
            except _Refusal as refusal:
                return refusal.response()
            except ApprovalNotFound:
                return _Refusal(404, "approval not found").response()
            except ApprovalConflict as exc:
                status = exc.approval.status.value
                return _Refusal(
                    409,
                    f"approval {exc.approval.id} is {status}; "
                    "only a pending approval can be approved or denied",
                    extra={"status": status},
                ).response()
            except ApprovalStoreUnavailable:
                log.error("approval_store_unavailable", path=request.url.path)
                self._observe("unavailable")
                return _Refusal(
                    503,
                    "the approval store is unavailable; retry shortly",
                    headers={"Retry-After": "1"},
                ).response()
            except Exception:
                log.exception("approval_admin_failed", path=request.url.path)
                return _Refusal(500, "internal error; see the sidecar's log").response()

        return run

    def _observe(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics.observe_approval(action)

    @staticmethod
    def _approval_id(request: Request) -> str:
        approval_id = str(request.path_params["approval_id"])
        if _APPROVAL_ID.fullmatch(approval_id) is None:
            raise ApprovalNotFound(approval_id)
        return approval_id

    # -- routes ---------------------------------------------------------------------

    async def list_approvals(self, request: Request, _approver: Approver) -> Response:
        wanted = request.query_params.get("status", "pending")
        statuses = STATUS_FILTERS.get(wanted)
        if statuses is None:
            raise _Refusal(400, f"status: must be one of {', '.join(STATUS_FILTERS)}")
        limit = _parse_limit(request.query_params.get("limit"))
        after = _parse_after(request.query_params.get("after"))
        now = self.clock()
        found = await self.store.list_approvals(
            now, statuses=statuses, after=after, limit=limit + 1
        )
        page = found[:limit]
        more = len(found) > limit
        config = self.config.current
        grants = _grants_by_id(config)
        return JSONResponse(
            {
                "approvals": [_present(a, config, grants) for a in page],
                "now": now,
                "next": format_cursor(page[-1].cursor) if more else None,
            },
            headers=_NO_STORE,
        )

    async def show(self, request: Request, _approver: Approver) -> Response:
        approval = await self.store.get(self._approval_id(request), self.clock())
        return JSONResponse(_present(approval, self.config.current), headers=_NO_STORE)

    async def approve(self, request: Request, approver: Approver) -> Response:
        return await self._decide(request, approver, approve=True)

    async def deny(self, request: Request, approver: Approver) -> Response:
        return await self._decide(request, approver, approve=False)

    async def _decide(self, request: Request, approver: Approver, *, approve: bool) -> Response:
        approval_id = self._approval_id(request)
        reason = _parse_reason(await _read_body(request), required=not approve)
        now = self.clock()
        config = self.config.current
        if approve:
            current = await self.store.get(approval_id, now)
            stale = stale_reason(config, current)
            if stale is not None and current.status is ApprovalStatus.PENDING:
                log.warning(
                    "approval_refused_stale",
                    approval_id=approval_id,
                    approver=approver.id,
                    stale=stale,
                )
                self._observe("stale")
                raise _Refusal(
                    409,
                    f"{STALE_MESSAGE} ({stale})",
                    extra={"status": current.status.value, "stale": True},
                )
        try:
            decided = await self.store.resolve(
                approval_id, approve=approve, approver=approver.id, reason=reason, now=now
            )
        except ApprovalConflict as exc:
            if exc.approval.status is ApprovalStatus.EXPIRED:
                self._observe("expired")  # a person acted too late: worth a dashboard
            raise
        action = "approved" if approve else "denied"
        log_approval(action, decided, approver=approver.id)
        self._observe(action)
        return JSONResponse(_present(decided.view(now), config), headers=_NO_STORE)


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def approval_routes(
    config: ConfigSource,
    store: ApprovalStore,
    *,
    metrics: Metrics | None = None,
    clock: Callable[[], float] = time.time,
    allow_remote: bool = False,
) -> list[BaseRoute]:
    """The /approvals routes, to add to the admin Starlette app. Unless `allow_remote`,
    they answer only clients whose TCP peer address is loopback (403 otherwise)."""
    api = _ApprovalsApi(config, store, metrics, clock, allow_remote)
    return [
        Route("/approvals", api.endpoint("GET", api.list_approvals), methods=_ALL_METHODS),
        Route("/approvals/{approval_id}", api.endpoint("GET", api.show), methods=_ALL_METHODS),
        Route(
            "/approvals/{approval_id}/approve",
            api.endpoint("POST", api.approve),
            methods=_ALL_METHODS,
        ),
        Route(
            "/approvals/{approval_id}/deny",
            api.endpoint("POST", api.deny),
            methods=_ALL_METHODS,
        ),
    ]
