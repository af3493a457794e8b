"""The mounted configuration directory: grants.json + policies/NAME.json, hot-reloaded.

Layout::

    CONFIG_DIR/grants.json
    CONFIG_DIR/policies/<policy name>.json
    CONFIG_DIR/approvers.json          (optional: who may decide held calls)
    CONFIG_DIR/tools.lock.json         (optional: the pinned tools, `mcp-authz pin`)
    CONFIG_DIR/tool-classes.json       (optional: the operator's tool classes)
    CONFIG_DIR/oauth.json              (optional: OAuth protected resource, `authz.oauth`)

The whole directory is one unit. A change is applied only when every file in it is valid;
otherwise the last good set stays in force and the error is reported (log + readiness).
Kubernetes ConfigMap/Secret mounts (``..data`` symlink swaps) work because files are read
through their paths on every poll and compared by content, not by mtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from authz.catalog.classes import (
    OVERRIDES_FILE,
    Classification,
    Override,
    OverridesError,
    classify_with,
    load_overrides,
)
from authz.config.approvers import APPROVERS_FILE, ApproversError, ApproverTable, load_approvers
from authz.config.grants import GrantsError, GrantTable, load_grants
from authz.oauth.config import OAUTH_FILE, OAuthConfig, OAuthConfigError, load_oauth
from authz.pinning.lock import LOCK_FILE, LockError, ToolLock, load_lock
from authz.policy import Policy, PolicyError, load_policy

__all__ = [
    "GRANTS_FILE",
    "POLICIES_DIR",
    "ConfigError",
    "ConfigSet",
    "ConfigSource",
    "ReloadStatus",
    "load_config",
    "tool_classes",
]


log = structlog.get_logger("mcp_authz.config")

GRANTS_FILE = "grants.json"
POLICIES_DIR = "policies"


class ConfigError(ValueError):
    """The configuration directory cannot be loaded; the message names file and field."""


@dataclass(frozen=True, slots=True)
class ConfigSet:
    grants: GrantTable
    policies: Mapping[str, Policy]
    fingerprint: str
    loaded_at: float
    approvers: ApproverTable = field(default_factory=ApproverTable)
    """Who may decide held calls through the admin API (empty without approvers.json)."""
    pins: ToolLock | None = None
    """The pinned tools (None without tools.lock.json)."""
    classes: Mapping[str, Classification] = field(default_factory=dict)
    """The class of every tool the lock pins or tool-classes.json names (a tool in neither
    has no known class)."""
    overrides: Mapping[str, Override] = field(default_factory=dict)
    """The operator's classes (tool-classes.json)."""
    oauth: OAuthConfig | None = None
    """The endpoint as an OAuth protected resource (None without oauth.json: no OAuth
    tokens are accepted and no metadata is published)."""

    def policy(self, name: str) -> Policy | None:
        return self.policies.get(name)


def _read_files(root: Path) -> dict[str, bytes]:
    """Read every configuration file under root into {relative path: bytes}."""
    files: dict[str, bytes] = {}
    grants = root / GRANTS_FILE
    try:
        files[GRANTS_FILE] = grants.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"{grants}: file not found") from exc
    except OSError as exc:
        raise ConfigError(f"{grants}: cannot read: {exc.strerror}") from exc
    for optional in (APPROVERS_FILE, LOCK_FILE, OVERRIDES_FILE, OAUTH_FILE):
        path = root / optional
        try:
            files[optional] = path.read_bytes()
        except FileNotFoundError:
            pass  # without approvers nobody decides approvals; without a lock nothing is pinned
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    policy_dir = root / POLICIES_DIR
    if policy_dir.is_dir():
        for path in sorted(policy_dir.iterdir()):
            if path.name.startswith(".") or path.suffix != ".json" or not path.is_file():
                continue
            try:
                files[f"{POLICIES_DIR}/{path.name}"] = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return files


def _fingerprint(files: Mapping[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


def _build(root: Path, files: Mapping[str, bytes]) -> ConfigSet:
    try:
        grants = load_grants(files[GRANTS_FILE])
    except GrantsError as exc:
        raise ConfigError(f"{root / GRANTS_FILE}: {exc}") from exc
    except Exception as exc:  # e.g. RecursionError from deeply nested JSON: still rejected
        raise ConfigError(f"{root / GRANTS_FILE}: cannot be loaded: {exc!r}") from exc
    approvers = ApproverTable()
    if APPROVERS_FILE in files:
        try:
            approvers = load_approvers(files[APPROVERS_FILE])
        except ApproversError as exc:
            raise ConfigError(f"{root / APPROVERS_FILE}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError from deeply nested JSON: still rejected
            raise ConfigError(f"{root / APPROVERS_FILE}: cannot be loaded: {exc!r}") from exc
        _check_own_tokens(root, approvers, grants)
    pins: ToolLock | None = None
    if LOCK_FILE in files:
        try:
            pins = load_lock(files[LOCK_FILE])
        except LockError as exc:
            raise ConfigError(f"{root / LOCK_FILE}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError from a deeply nested schema
            raise ConfigError(f"{root / LOCK_FILE}: cannot be loaded: {exc!r}") from exc
    overrides: Mapping[str, Override] = {}
    if OVERRIDES_FILE in files:
        try:
            overrides = load_overrides(files[OVERRIDES_FILE])
        except OverridesError as exc:
            raise ConfigError(f"{root / OVERRIDES_FILE}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError from deeply nested JSON
            raise ConfigError(f"{root / OVERRIDES_FILE}: cannot be loaded: {exc!r}") from exc
    oauth: OAuthConfig | None = None
    if OAUTH_FILE in files:
        try:
            oauth = load_oauth(files[OAUTH_FILE])
        except OAuthConfigError as exc:
            raise ConfigError(f"{root / OAUTH_FILE}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError from deeply nested JSON
            raise ConfigError(f"{root / OAUTH_FILE}: cannot be loaded: {exc!r}") from exc
    _check_oauth_issuers(root, grants, oauth)
    policies: dict[str, Policy] = {}
    for rel, raw in files.items():
        if not rel.startswith(POLICIES_DIR + "/"):
            continue
        name = rel[len(POLICIES_DIR) + 1 : -len(".json")]
        try:
            policies[name] = load_policy(raw, name=name)
        except PolicyError as exc:
            raise ConfigError(f"{root / rel}: {exc}") from exc
        except Exception as exc:  # e.g. RecursionError from deeply nested JSON: still rejected
            raise ConfigError(f"{root / rel}: cannot be loaded: {exc!r}") from exc
    return ConfigSet(
        grants=grants,
        policies=policies,
        fingerprint=_fingerprint(files),
        loaded_at=time.time(),
        approvers=approvers,
        pins=pins,
        classes=tool_classes(pins, overrides),
        overrides=overrides,
        oauth=oauth,
    )


def tool_classes(
    lock: ToolLock | None, overrides: Mapping[str, Override]
) -> dict[str, Classification]:
    """The class of every tool the lock pins or the overrides name."""
    pinned = lock.tools if lock is not None else {}
    return {
        name: classify_with(name, pinned[name].definition if name in pinned else None, overrides)
        for name in sorted({*pinned, *overrides})
    }


def _check_own_tokens(root: Path, approvers: ApproverTable, grants: GrantTable) -> None:
    """An approver's admin token must not also be an agent's grant token."""
    for approver in approvers:
        grant = grants.by_hash.get(approver.token_sha256)
        if grant is not None:
            raise ConfigError(
                f"{root / APPROVERS_FILE}: $.approvers[{approver.index}].token_sha256 "
                f"(approver {approver.id!r}): same token as grant {grant.id!r} in "
                f"{GRANTS_FILE}; an approver's admin token must be its own, never an agent's"
            )


def _check_oauth_issuers(root: Path, grants: GrantTable, oauth: OAuthConfig | None) -> None:
    """Every issuer an `oauth` grant names is one oauth.json trusts: a grant that no token
    could ever match is a mistake."""
    for index, (matcher, grant) in enumerate(grants.oauth_grants):
        if oauth is None:
            raise ConfigError(
                f"{root / GRANTS_FILE}: grant {grant.id!r} is an oauth grant, but there is no "
                f"{OAUTH_FILE}; add it (the resource and its authorization servers)"
            )
        if matcher.issuer not in oauth.authorization_servers:
            raise ConfigError(
                f"{root / GRANTS_FILE}: grant {grant.id!r} (oauth grant {index + 1}): issuer "
                f"{matcher.issuer!r} is not among {OAUTH_FILE}'s authorization_servers "
                f"({', '.join(oauth.authorization_servers)})"
            )


def load_config(root: Path) -> ConfigSet:
    """Load and validate the whole directory once, or raise ConfigError."""
    return _build(root, _read_files(root))


@dataclass
class ReloadStatus:
    last_error: str | None = None
    last_error_at: float | None = None
    reloads: int = 0
    failures: int = 0


@dataclass
class ConfigSource:
    """Holds the current ConfigSet and polls the directory for changes."""

    root: Path
    current: ConfigSet
    interval: float = 1.0
    status: ReloadStatus = field(default_factory=ReloadStatus)
    on_change: Callable[[ConfigSet], None] | None = None
    _task: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, root: Path, interval: float = 1.0) -> ConfigSource:
        return cls(root=root, current=load_config(root), interval=interval)

    def poll(self) -> bool:
        """Check the directory once. Returns True when a new set was applied."""
        try:
            files = _read_files(self.root)
            fingerprint = _fingerprint(files)
            if fingerprint == self.current.fingerprint:
                if self.status.last_error is not None:
                    # reverted to the good set: nothing to report any more
                    self.status.last_error = None
                    self.status.last_error_at = None
                    log.info("config_applied", fingerprint=fingerprint[:12], restored=True)
                return False
            candidate = _build(self.root, files)
            # A ConfigMap swap may land between two reads; only apply a stable view.
            if _fingerprint(_read_files(self.root)) != candidate.fingerprint:
                return False
        except ConfigError as exc:
            message = str(exc)
            if message != self.status.last_error:
                self.status.failures += 1
                log.error(
                    "config_rejected",
                    error=message,
                    kept_fingerprint=self.current.fingerprint[:12],
                )
            self.status.last_error = message
            self.status.last_error_at = time.time()
            return False
        self.current = candidate
        self.status.reloads += 1
        self.status.last_error = None
        self.status.last_error_at = None
        log.info(
            "config_applied",
            fingerprint=candidate.fingerprint[:12],
            grants=len(candidate.grants),
            policies=sorted(candidate.policies),
            approvers=len(candidate.approvers),
            pinned=len(candidate.pins) if candidate.pins is not None else None,
            oauth=candidate.oauth.resource if candidate.oauth is not None else None,
        )
        if self.on_change is not None:
            self.on_change(candidate)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.poll)
            except Exception:  # never let the reloader die; the last good set stays
                log.exception("config_poll_failed")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
