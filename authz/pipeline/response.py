"""The response pipeline: one response → `ResponseInspector` → give-back → audit event.

The response-phase sibling of `gate.py`. It knows nothing about protobuf (the ext_proc
edge, `authz/envoy/extproc.py`, builds the `ResponseContext` and feeds the inspector) and
nothing about which stores it has. It looks up the grant's current policy (what its answers
must not show), gives back the reservation of a call the server did not run
(`CounterStore.release`: idempotent, never below zero), frees the request's id in the
in-flight registry (`InflightStore.release`) and writes one audit event per allowed
request's response, under the request's decision id:

    {"event": "response", "decision_id": ..., "grant_id": ..., "method": "tools/call",
     "tool": ..., "status": 503, "origin": "upstream_reset_before_response_started{...}",
     "media": "json", "tools_removed": 0, "withheld": 0, "give_back": true,
     "reason": "not_delivered", "released": true, "complete": null, "duration_ms": ...}
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import structlog

from authz.config.source import ConfigSource
from authz.counters.base import CounterStore
from authz.engine import listing_filter
from authz.inflight.base import InflightStore
from authz.metrics import Metrics
from authz.model import Definitions, ListingFilter
from authz.pinning.drift import DriftWatch
from authz.response.inspector import MAX_HELD_BYTES, ResponseContext, ResponseInspector

__all__ = ["Responder"]

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
        inflight: InflightStore | None = None,
        drift: DriftWatch | None = None,
    ) -> None:
        """`drift` is the tool lock's memory of drifted tools, shared with the request
        phase (its own when None)."""
        self._config = config
        self._drift = drift if drift is not None else DriftWatch()
        self._counters = counters
        self._inflight = inflight
        self._metrics = metrics
        self._limit = limit
        self._store_name = counters.describe().split(" ", 1)[0]
        self._pending: set[asyncio.Task[None]] = set()

    def open(self, context: ResponseContext) -> ResponseInspector:
        """An inspector for one response; every answer to a grant whose policy filters its
        listings is filtered by that policy as it is now. A policy that filtered them when
        the request was allowed and is gone now hides every listed element."""
        hides: ListingFilter | None = None
        if context.allowed and context.policy:
            config = self._config.current
            policy = config.policy(context.policy)
            if policy is not None:
                definitions: Definitions | None = None
                if self._drift.sync(config.pins) is not None and policy.pinning != "off":
                    definitions = self._definitions(policy.pinning == "enforce", context)
                hides = listing_filter(policy, definitions, config.classes)
            elif context.hides:
                log.warning(
                    "response_policy_missing",
                    decision_id=context.decision_id,
                    policy=context.policy,
                )
                hides = ListingFilter.everything()
        return ResponseInspector(context, hides, limit=self._limit)

    def _definitions(self, enforce: bool, context: ResponseContext) -> Definitions:
        """The tool lock's check of each listed tool: a drift is reported the first time
        it is seen (audit event `tool_definition_changed`, metric); under `enforce` the
        tool is cut (and its calls denied: `DriftWatch`), and so is an element without a
        name."""
        watch, metrics = self._drift, self._metrics

        def drifted(element: Mapping[str, Any]) -> bool:
            seen = watch.observe(element)
            if seen is None:
                return enforce
            if seen.drifted and seen.new:
                _audit.warning(
                    "tool_definition_changed",
                    tool=seen.name,
                    change=seen.status,
                    old_hash=seen.pinned,
                    new_hash=seen.listed,
                    pinning="enforce" if enforce else "report",
                    decision_id=context.decision_id,
                    grant_id=context.grant_id,
                )
                if metrics is not None:
                    metrics.definition_changes.labels(
                        change=seen.status, pinning="enforce" if enforce else "report"
                    ).inc()
            return enforce and seen.drifted

        return drifted

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
        """Free the request's id, give the quota back if the server did not run the call,
        then write the audit event."""
        context, report = inspector.context, inspector.report
        released: bool | None = None
        error: str | None = None
        if context.inflight is not None and self._inflight is not None:
            try:
                await self._inflight.release(context.inflight, context.decision_id or "")
            except Exception as exc:  # the entry expires on its own (INFLIGHT_TTL_SECONDS)
                log.warning(
                    "inflight_release_failed",
                    decision_id=context.decision_id,
                    error=type(exc).__name__,
                )
        if report.give_back and context.reservation is not None:
            try:
                await self._counters.release(context.reservation)
                released = True
            except Exception as exc:  # the store is down or slow: the quota stays taken
                released, error = False, f"{type(exc).__name__}: {exc}"
                if self._metrics is not None:
                    self._metrics.store_errors.labels(store=self._store_name).inc()
        if report.unparsed or report.oversized or report.withheld:
            log.warning(
                "response_unparsed",
                decision_id=context.decision_id,
                method=context.method,
                media=report.media,
                unparsed=report.unparsed,
                oversized=report.oversized,
                withheld=report.withheld,
            )
        if not context.allowed:
            return  # a denial or an Envoy local reply: the request phase logged it
        extra: dict[str, object] = {}
        if report.unparsed:
            extra["unparsed"] = report.unparsed
        if report.oversized:
            extra["oversized"] = report.oversized
        if report.content_removed:
            extra["content_removed"] = report.content_removed
        if error is not None:
            extra["release_error"] = error
        _audit.info(
            "response",
            decision_id=context.decision_id,
            grant_id=context.grant_id,
            method=context.method,
            tool=context.tool,
            status=report.status,
            origin=report.origin,
            media=report.media,
            tools_removed=report.tools_removed,
            withheld=report.withheld,
            give_back=report.give_back,
            reason=report.reason,
            released=released,
            complete=report.complete,
            duration_ms=round(seconds * 1000, 3),
            **extra,
        )
