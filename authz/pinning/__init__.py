"""Pinning: what the upstream's tools were when an operator pinned them (`lock`), the drift
the sidecar has seen since (`drift`), and strict arguments (`arguments`)."""

from authz.pinning.arguments import ArgumentSchema, SchemaProblem, Violation, compile_schema
from authz.pinning.drift import DriftWatch, Observation, PinView
from authz.pinning.lock import (
    LOCK_FILE,
    LockError,
    PinnedTool,
    ToolLock,
    definition_hash,
    drift_report,
    load_lock,
    lock_document,
    render_lock,
)

__all__ = [
    "LOCK_FILE",
    "ArgumentSchema",
    "DriftWatch",
    "LockError",
    "Observation",
    "PinView",
    "PinnedTool",
    "SchemaProblem",
    "ToolLock",
    "Violation",
    "compile_schema",
    "definition_hash",
    "drift_report",
    "load_lock",
    "lock_document",
    "render_lock",
]
