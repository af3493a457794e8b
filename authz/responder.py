"""The response pipeline: one response → `ResponseInspector` → give-back → audit event.

The response-phase sibling of `service.py`. It knows nothing about protobuf (the ext_proc
edge, `authz/envoy/extproc.py`, builds the `ResponseContext` and feeds the inspector) and
nothing about which counter store it has. It looks up the grant's policy for listings, gives
a failed call's reservation back (`CounterStore.release`: idempotent, never below zero) and
writes one audit event per allowed request's response, under the request's decision id:

    {"event": "response", "decision_id": ..., "grant_id": ..., "method": "tools/call",
     "tool": ..., "status": 503, "media": "none", "tools_removed": 0, "give_back": true,
     "reason": "http_status", "released": true, "complete": false, "duration_ms": ...}
"""

from __future__ import annotations

import asyncio

import structlog

from authz.config import ConfigSource
from authz.counters.base import CounterStore
from authz.metrics import Metrics
from authz.response import (
    MAX_HELD_BYTES,
    TOOLS_LIST,
    Hides,
    ResponseContext,
    ResponseInspector,
    listing_filter,
)

log = structlog.get_logger("mcp_authz.response")
_audit = structlog.get_logger("mcp_authz.audit")


class Responder:
    """Opens an inspector per response and settles it (give-back, audit) when it ends."""

    def __init__(
        self,
        config: ConfigSource,
        counters: CounterStore,
        *,
        metrics: Metrics | None = None,
        limit: int = MAX_HELD_BYTES,
    ) -> None:
        self._config = config
        self._counters = counters
        self._metrics = metrics
        self._limit = limit
        self._store_name = counters.describe().split(" ", 1)[0]
        self._pending: set[asyncio.Task[None]] = set()

    def open(self, context: ResponseContext) -> ResponseInspector:
        """An inspector for one response; listings are filtered by the grant's policy."""
        hides: Hides | None = None
        if context.allowed and context.method == TOOLS_LIST and context.policy:
            policy = self._config.current.policy(context.policy)
            if policy is None:
                log.warning(
                    "response_policy_missing",
                    decision_id=context.decision_id,
                    policy=context.policy,
                )
            else:
                hides = listing_filter(policy)
        return ResponseInspector(context, hides, limit=self._limit)

    def finish(self, inspector: ResponseInspector, seconds: float) -> None:
        """Settle, in the background, a response whose ext_proc stream ended first.

        Synchronous on purpose: the stream may already be cancelled when this runs, and the
        give-back must happen anyway. (A response that ended normally is settled inline,
        with `settle`, before its last answer goes to Envoy.)
        """
        task = asyncio.get_running_loop().create_task(self.settle(inspector, seconds))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for every give-back still running (shutdown, tests)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def settle(self, inspector: ResponseInspector, seconds: float) -> None:
        """Give the quota back if the call failed, then write the audit event."""
        context, outcome = inspector.context, inspector.outcome
        released: bool | None = None
        error: str | None = None
        if outcome.give_back and context.reservation is not None:
            try:
                await self._counters.release(context.reservation)
                released = True
            except Exception as exc:  # the store is down or slow: the quota stays taken
                released, error = False, f"{type(exc).__name__}: {exc}"
                if self._metrics is not None:
                    self._metrics.store_errors.labels(store=self._store_name).inc()
        if outcome.unparsed or outcome.oversized:
            log.warning(
                "response_unparsed",
                decision_id=context.decision_id,
                method=context.method,
                media=outcome.media,
                unparsed=outcome.unparsed,
                oversized=outcome.oversized,
            )
        if not context.allowed:
            return  # a denial or an Envoy local reply: the request phase logged it
        extra: dict[str, object] = {}
        if outcome.unparsed:
            extra["unparsed"] = outcome.unparsed
        if outcome.oversized:
            extra["oversized"] = outcome.oversized
        if error is not None:
            extra["release_error"] = error
        _audit.info(
            "response",
            decision_id=context.decision_id,
            grant_id=context.grant_id,
            method=context.method,
            tool=context.tool,
            status=outcome.status,
            media=outcome.media,
            tools_removed=outcome.tools_removed,
            give_back=outcome.give_back,
            reason=outcome.reason,
            released=released,
            complete=outcome.complete,
            duration_ms=round(seconds * 1000, 3),
            **extra,
        )
