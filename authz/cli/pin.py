"""`mcp-authz pin`: fetch the upstream's `tools/list` with the MCP SDK client and write the
tool lock (`tools.lock.json`), or with `--check` compare the upstream with it.

The lock's hashes are of the `tools/list` elements exactly as the server sent them, as the
sidecar hashes the answers it sees: the listing is asked for through the SDK session with a
result model whose `tools` are plain JSON objects, never through the SDK's `Tool` model
(which drops members it does not know, such as a vendor's extra annotation).

Exit codes: 0 pinned / no drift; 1 drift (`--check`); 2 cannot decide (the upstream cannot
be reached or answers an error, no lock or an invalid one, bad arguments). Header values
(tokens) are never printed or logged.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import re
import sys
import tempfile
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from authz.extras import ExtraMissing, require_extra
from authz.pinning.lock import (
    LOCK_FILE,
    LockError,
    ToolLock,
    definition_hash,
    drift_report,
    load_lock,
    lock_document,
    render_lock,
)

if TYPE_CHECKING:  # imported when fetching: the SDK costs every other command ~0.7 s
    import httpx2
    from mcp import Client
    from mcp.shared.exceptions import MCPError

__all__ = [
    "MAX_PAGES",
    "MODES",
    "PinError",
    "add_pin_parser",
    "fetch_tools",
    "parse_header",
    "write_atomically",
]

MODES: Final = ("auto", "legacy", "2026-07-28")
"""`--mode`: the SDK client's protocol negotiation (`auto` probes, then falls back)."""
MAX_PAGES: Final = 1000
"""Pages of `tools/list` followed at most; an upstream that pages on past them is refused."""
DEFAULT_TIMEOUT: Final = 30.0

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
"""An HTTP field name (RFC 9110 token)."""


class PinError(Exception):
    """The command cannot decide; exit 2 after printing the message."""


class _ListingPage(BaseModel):
    """One `tools/list` result, its tools kept as the JSON objects the server sent."""

    model_config = ConfigDict(extra="ignore")

    tools: list[dict[str, Any]]
    next_cursor: str | None = Field(default=None, alias="nextCursor")


@dataclass
class _HttpTrace:
    """The last error status the upstream answered (the SDK turns it into a JSON-RPC error
    without the status)."""

    status: int | None = None

    async def on_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self.status = response.status_code


# -- arguments -------------------------------------------------------------------------


def parse_header(raw: str) -> tuple[str, str]:
    """`Name: value` → (name, value). The message of the ValueError never holds the value."""
    name, sep, value = raw.partition(":")
    name = name.strip()
    if not sep or not _HEADER_NAME.match(name):
        raise ValueError("--header: expected 'Name: value' (e.g. 'Authorization: Bearer ...')")
    value = value.strip()
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"--header {name}: the value has a line break or NUL")
    return name, value


def _headers(raw: Sequence[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in raw:
        try:
            name, value = parse_header(item)
        except ValueError as exc:
            raise PinError(str(exc)) from None
        headers[name] = value
    return headers


def _shown_url(url: str) -> str:
    """The URL as messages show it: without user info, query or fragment (credentials)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise PinError(f"--url: bad port in {_shown_url(url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PinError(
            "--url: expected the upstream's http(s):// MCP endpoint, e.g. http://HOST/mcp"
        )


def _lock_path(args: argparse.Namespace) -> Path:
    if args.lock is not None:
        return Path(args.lock)
    config = args.config or os.environ.get("MCP_AUTHZ_CONFIG")
    if not config:
        raise PinError(
            "--config: a configuration directory is required (or $MCP_AUTHZ_CONFIG, or --lock FILE)"
        )
    return Path(config) / LOCK_FILE


# -- fetching --------------------------------------------------------------------------


async def fetch_tools(
    url: str,
    headers: Mapping[str, str] | None = None,
    *,
    mode: str = "auto",
    timeout: float = DEFAULT_TIMEOUT,
) -> list[dict[str, Any]]:
    """Every `tools/list` element the upstream offers, as sent, following `nextCursor` to
    the end. Raises `PinError` with a readable message on any failure."""
    try:
        require_extra("pin", "reading an upstream's tools/list (the MCP SDK client)")
    except ExtraMissing as exc:
        raise PinError(str(exc)) from None
    import httpx2
    from mcp.shared.exceptions import MCPError

    trace = _HttpTrace()
    shown = _shown_url(url)
    try:
        async with asyncio.timeout(timeout):
            return await _fetch(url, dict(headers or {}), mode, timeout, trace)
    except TimeoutError:
        raise PinError(f"{shown}: no complete tools/list within {timeout:g} s") from None
    except PinError:
        raise
    except MCPError as exc:
        raise PinError(_mcp_error(shown, exc, trace)) from None
    except ValidationError as exc:
        raise PinError(f"{shown}: not a valid tools/list answer: {_first_error(exc)}") from None
    except BaseExceptionGroup as group:
        raise PinError(_from_group(shown, group, trace)) from None
    except httpx2.HTTPError as exc:
        raise PinError(_http_error(shown, exc)) from None
    except (OSError, RuntimeError, ValueError) as exc:
        raise PinError(f"{shown}: {type(exc).__name__}: {exc}") from None


async def _fetch(
    url: str, headers: dict[str, str], mode: str, timeout: float, trace: _HttpTrace
) -> list[dict[str, Any]]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(
        headers=headers,
        timeout=timeout,
        follow_redirects=False,
        event_hooks={"response": [trace.on_response]},
    ) as http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, cache=None) as client:
            return await _all_pages(client, _shown_url(url))


async def _all_pages(client: Client, shown: str) -> list[dict[str, Any]]:
    import mcp_types

    elements: list[dict[str, Any]] = []
    names: dict[str, int] = {}
    cursors: set[str] = set()
    cursor: str | None = None
    for page in range(MAX_PAGES):
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        result = await client.session.send_request(
            mcp_types.ListToolsRequest(params=params), _ListingPage
        )
        for i, element in enumerate(result.tools):
            name = element.get("name")
            where = f"page {page + 1}, tools[{i}]"
            if not isinstance(name, str) or not name:
                raise PinError(f"{shown}: tools/list {where} has no name")
            if name in names:
                raise PinError(f"{shown}: tools/list offers {name!r} twice ({where})")
            names[name] = len(elements)
            elements.append(element)
        cursor = result.next_cursor
        if cursor is None:
            return elements
        if cursor in cursors:
            raise PinError(
                f"{shown}: tools/list pages loop (page {page + 1} hands back a cursor "
                "it handed out before)"
            )
        cursors.add(cursor)
    raise PinError(f"{shown}: tools/list did not end within {MAX_PAGES} pages")


def _mcp_error(shown: str, exc: MCPError, trace: _HttpTrace) -> str:
    message = exc.error.message
    rpc = f"JSON-RPC error {exc.error.code}: {_printable(message)}"
    if trace.status is None:
        # the SDK's transport makes up these two for a 200 that is not MCP
        if message.startswith("Failed to parse JSON response"):
            return f"{shown}: the upstream's JSON answer is not JSON-RPC; is this its MCP endpoint?"
        if message.startswith("Unexpected content type:"):
            kind = _printable(message.partition(":")[2].strip(), 80) or "no content type"
            return (
                f"{shown}: the upstream answered {kind}, neither JSON nor an event stream; "
                "is this its MCP endpoint?"
            )
        return f"{shown}: the upstream answered {rpc}"
    try:
        phrase = HTTPStatus(trace.status).phrase
    except ValueError:
        phrase = "error"
    answer = f"{shown}: the upstream answered HTTP {trace.status} ({phrase})"
    if exc.error.message not in _SDK_STAND_INS:  # the server's own JSON-RPC error
        answer += f", {rpc}"
    elif trace.status != 401:
        return f"{answer}; is this its MCP endpoint?"
    if trace.status == 401:
        answer += " (pass a credential with --header)"
    return answer


_SDK_STAND_INS: Final = frozenset(
    {"Server returned an error response", "Not Found", "Session terminated"}
)
"""The messages the SDK's transport makes up for an HTTP error without a JSON-RPC body."""


def _printable(text: str, limit: int | None = 300) -> str:
    """Server-chosen text for the terminal: control and format characters (escape
    sequences, bidi overrides) escaped, so it cannot rewrite the screen; length bounded."""
    clean = "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)
    return clean if limit is None or len(clean) <= limit else clean[:limit] + "…"


def _http_error(shown: str, exc: httpx2.HTTPError) -> str:
    import httpx2

    if isinstance(exc, httpx2.HTTPStatusError):
        return f"{shown}: the upstream answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.ConnectError):
        return f"{shown}: cannot connect ({exc or 'connection refused'})"
    if isinstance(exc, httpx2.TimeoutException):
        return f"{shown}: timed out ({type(exc).__name__})"
    return f"{shown}: {type(exc).__name__}: {exc}"


def _leaves(group: BaseExceptionGroup[Any]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _from_group(shown: str, group: BaseExceptionGroup[Any], trace: _HttpTrace) -> str:
    """The message of the most telling exception in a task group's failure."""
    import httpx2
    from mcp.shared.exceptions import MCPError

    leaves = list(_leaves(group))
    for leaf in leaves:
        if isinstance(leaf, PinError):
            return str(leaf)
    for leaf in leaves:
        if isinstance(leaf, MCPError):
            return _mcp_error(shown, leaf, trace)
    for leaf in leaves:
        if isinstance(leaf, httpx2.HTTPError):
            return _http_error(shown, leaf)
    for leaf in leaves:
        if isinstance(leaf, ValidationError):
            return f"{shown}: not a valid tools/list answer: {_first_error(leaf)}"
    for leaf in leaves:
        if isinstance(leaf, TimeoutError):
            return f"{shown}: timed out"
    first = leaves[0] if leaves else group
    return f"{shown}: {type(first).__name__}: {first}"


def _first_error(exc: ValidationError) -> str:
    """The first problem of a validation error, without the input (pydantic echoes it)."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "does not validate"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "result"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


# -- the lock file ---------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) through a temporary file in the same directory and
    a rename, so a reader (a hot-reloading sidecar) sees the old file or the new, never half.
    The new file keeps the old one's permissions (else 0644 less the umask)."""
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o644 & ~umask
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_lock(path: Path) -> ToolLock:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PinError(f"{path}: no lock to check against; pin first (mcp-authz pin)") from None
    except OSError as exc:
        raise PinError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return load_lock(raw)
    except LockError as err:
        raise PinError(
            "\n".join(f"{path}: {where}: {message}" for where, message in err.problems)
        ) from None


# -- the command -----------------------------------------------------------------------


def _quiet_libraries() -> None:
    """The SDK and httpx log through `logging`; their records (a traceback for a bad answer,
    request lines) never reach the terminal: the command says what went wrong itself."""
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.CRITICAL)


def _cmd_pin(args: argparse.Namespace) -> int:
    _quiet_libraries()
    try:
        return _pin(args)
    except PinError as exc:
        print(f"mcp-authz pin: {exc}", file=sys.stderr)
        return 2


def _pin(args: argparse.Namespace) -> int:
    _check_url(args.url)
    if not args.timeout > 0:
        raise PinError("--timeout: must be positive")
    headers = _headers(args.header or ())
    path = _lock_path(args)
    lock = _read_lock(path) if args.check else None
    if lock is None and not path.parent.is_dir():
        raise PinError(f"{path.parent}: no such directory (the lock's directory)")
    elements = asyncio.run(fetch_tools(args.url, headers, mode=args.mode, timeout=args.timeout))
    if lock is not None:
        return _check(path, lock, elements)
    pinned_at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        text = render_lock(lock_document(elements, pinned_at=pinned_at))
        load_lock(text.encode("utf-8"))
    except LockError as err:
        # the sidecar would refuse this lock (e.g. an inputSchema it cannot compile)
        problems = "\n".join(f"  {where}: {message}" for where, message in err.problems)
        raise PinError(
            f"the upstream's tools cannot be pinned; nothing written:\n{problems}"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN or Infinity, nesting past any limit
        raise PinError(
            f"the upstream's tools cannot be pinned; nothing written: {_not_json(exc)}"
        ) from None
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise PinError(f"{path}: cannot write: {exc.strerror or exc}") from None
    plural = "" if len(elements) == 1 else "s"
    print(f"pinned {len(elements)} tool{plural} to {path}")
    for element in sorted(elements, key=lambda e: str(e["name"])):
        print(f"  {definition_hash(element)[:12]}  {_printable(element['name'])}")
    return 0


def _not_json(exc: ValueError | RecursionError) -> str:
    if isinstance(exc, RecursionError):
        return "a definition is nested too deeply"
    if "JSON compliant" in str(exc):
        return "a definition holds NaN or Infinity, which JSON does not have"
    return _printable(str(exc))


def _check(path: Path, lock: ToolLock, elements: list[dict[str, Any]]) -> int:
    try:
        report = drift_report(lock, elements)
    except (ValueError, RecursionError) as exc:  # NaN or Infinity, nesting past any limit
        raise PinError(
            f"the upstream's tools cannot be compared with {path}: {_not_json(exc)}"
        ) from None
    if not report:
        plural = "" if len(lock) == 1 else "s"
        print(f"no drift: {len(lock)} tool{plural} match {path}")
        return 0
    print(f"drift: the upstream's tools differ from {path}")
    for line in report:
        print(_printable(line, limit=None))
    return 1


def add_pin_parser(sub: Any) -> None:
    """Register `mcp-authz pin` on the command line's subparsers."""
    pin = sub.add_parser(
        "pin",
        help="pin the upstream's tool definitions (tools.lock.json), or --check them for drift",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    pin.add_argument(
        "--url", required=True, help="the upstream's MCP endpoint, e.g. http://HOST/mcp"
    )
    pin.add_argument(
        "--config",
        help="configuration directory the lock goes into (default $MCP_AUTHZ_CONFIG)",
    )
    pin.add_argument("--lock", type=Path, help=f"the lock file (default <config>/{LOCK_FILE})")
    pin.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="an HTTP header for every request to the upstream (repeatable); values are "
        "never printed",
    )
    pin.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="protocol era: auto (probe, then fall back), legacy (initialize handshake) or "
        "2026-07-28 (stateless); default auto",
    )
    pin.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds for the whole listing (default {DEFAULT_TIMEOUT:g})",
    )
    pin.add_argument(
        "--check",
        action="store_true",
        help="compare the upstream with the lock instead of writing it: exit 0 no drift, "
        "1 drift (a diff is printed), 2 cannot decide",
    )
    pin.set_defaults(func=_cmd_pin)
