"""`mcp-authz catalog`: every tool behind the gateway, classified by what it does (read,
write, delete, execute, financial) and how risky it is, with which grants can call it under
which rule, and the tools that no policy mentions (blind spots).

The tools are the configuration's pinned lock (`tools.lock.json`), or with `--url` the
upstream's live `tools/list`, plus the tools named only in `tool-classes.json`. Exit codes:
0 listed; 2 the configuration cannot be loaded, it has nothing to list, or the upstream
cannot be read. Header values (tokens) are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
import urllib.parse
from pathlib import Path
from typing import Any, Final

from authz.catalog.classes import OVERRIDES_FILE, RECOMMENDATIONS
from authz.cli.catalog_report import (
    Catalog,
    CatalogTool,
    GrantAccess,
    build_catalog,
    catalog_document,
)
from authz.cli.pin import MODES, PinError, fetch_tools, parse_header
from authz.config.grants import GrantTable
from authz.model import Grant
from authz.pinning.lock import LOCK_FILE

__all__ = ["add_catalog_parser", "all_grants", "render_table"]

DEFAULT_TIMEOUT: Final = 30.0
WIDTH: Final = 100
"""The notes under a row (why, blind spot) wrap at this width."""
_INDENT: Final = "    "


class _CatalogError(Exception):
    """The command cannot list; exit 2 after printing the message."""


def _printable(text: str) -> str:
    """Text an upstream chose (a tool's name) for the terminal: control and format
    characters escaped, so it cannot rewrite the screen."""
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


def all_grants(table: GrantTable) -> list[Grant]:
    """Every grant of grants.json (token, SPIFFE ID and JWT grants), by id."""
    grants = [*table.by_hash.values(), *table.by_spiffe_id.values()]
    grants += [grant for _, grant in table.jwt_grants]
    return sorted(grants, key=lambda grant: grant.id)


# -- the table -----------------------------------------------------------------------------


def _grant_lines(tool: CatalogTool) -> list[tuple[str, str, str]]:
    if not tool.grants:
        return [("(no grants)", "", "")]
    return [
        (access.grant, "yes" if access.callable else "no", _rule(tool, access))
        for access in tool.grants
    ]


def _rule(tool: CatalogTool, access: GrantAccess) -> str:
    shown_class = tool.classification.tool_class
    if access.judged_as is not None and access.judged_as != (shown_class and shown_class.value):
        return f"{access.rule} (judged as {access.judged_as})"
    return access.rule


def _notes(tool: CatalogTool) -> list[str]:
    c = tool.classification
    by = {"definition": "from its definition", "override": f"from {OVERRIDES_FILE}"}.get(c.source)
    notes = [f"why: {_printable(c.reason)}" + (f" ({by})" if by else "")]
    if tool.offered is False:
        notes.append(f"not offered by the upstream (named in {OVERRIDES_FILE} only)")
    if tool.lock == "not pinned":
        notes.append(f"not in {LOCK_FILE}: where pinning is enforced its calls are denied (pin)")
    elif tool.lock == "changed":
        notes.append(
            f"its definition differs from {LOCK_FILE}: where pinning is enforced its calls "
            "are denied (pin) once the sidecar sees it listed; review it and pin again"
        )
    if tool.blind_spot:
        notes.append(
            'BLIND SPOT: no policy has an entry for it or its class; only "default" decides'
        )
    return notes


def render_table(catalog: Catalog) -> str:
    """The catalog for people: one row per tool (TOOL, CLASS, RISK, GRANTS: each grant,
    whether it can call the tool and the deciding rule), indented notes under it, the
    recommendation of each class present and a summary."""
    rows = []
    for tool in catalog.tools:
        c = tool.classification
        rows.append(
            (
                _printable(tool.name),
                c.tool_class.value if c.tool_class is not None else "unknown",
                c.risk.value if c.risk is not None else "-",
                _grant_lines(tool),
                _notes(tool),
            )
        )
    name_w = max([len("TOOL"), *(len(r[0]) for r in rows)])
    class_w = max([len("CLASS"), *(len(r[1]) for r in rows)])
    risk_w = max([len("RISK"), *(len(r[2]) for r in rows)])
    grant_w = max([0, *(len(g[0]) for r in rows for g in r[3])])
    lead = name_w + class_w + risk_w + 6
    lines = [f"{'TOOL':<{name_w}}  {'CLASS':<{class_w}}  {'RISK':<{risk_w}}  GRANTS"]
    for name, tool_class, risk, grants, notes in rows:
        for i, (grant, can, rule) in enumerate(grants):
            cell = f"{grant:<{grant_w}}  {can:<3}  {rule}".rstrip()
            if i == 0:
                row = f"{name:<{name_w}}  {tool_class:<{class_w}}  {risk:<{risk_w}}  "
                lines.append(row + cell)
            else:
                lines.append(" " * lead + cell)
        for note in notes:
            lines += textwrap.wrap(
                note,
                WIDTH,
                initial_indent=_INDENT,
                subsequent_indent=_INDENT + "  ",
                break_on_hyphens=False,
                break_long_words=False,
            )
    by_class = catalog.by_class()
    present = [tool_class for tool_class in by_class if tool_class is not None]
    if present:
        lines += ["", "Recommendations:"]
        lines += [f"  {tool_class.value}: {RECOMMENDATIONS[tool_class]}" for tool_class in present]
    lines += ["", _summary(catalog)]
    return "\n".join(lines)


def _summary(catalog: Catalog) -> str:
    count = len(catalog.tools)
    where = LOCK_FILE if catalog.source == "lock" else "the upstream, live"
    classes = ", ".join(
        f"{len(names)} {tool_class.value if tool_class is not None else 'unknown'}"
        for tool_class, names in catalog.by_class().items()
    )
    blind = catalog.blind_spots
    spots = f"{len(blind)} ({', '.join(_printable(n) for n in blind)})" if blind else "none"
    plural = "" if count == 1 else "s"
    return f"{count} tool{plural} ({where}): {classes or 'none'}; blind spots: {spots}"


# -- the command -------------------------------------------------------------------------


def _config_dir(args: argparse.Namespace) -> Path:
    config = args.config or os.environ.get("MCP_AUTHZ_CONFIG")
    if not config:
        raise _CatalogError(
            "--config: a configuration directory is required (or $MCP_AUTHZ_CONFIG)"
        )
    return Path(config)


def _live(args: argparse.Namespace) -> list[dict[str, Any]]:
    parts = urllib.parse.urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _CatalogError(
            "--url: expected the upstream's http(s):// MCP endpoint, e.g. http://HOST/mcp"
        )
    if not args.timeout > 0:
        raise _CatalogError("--timeout: must be positive")
    headers: dict[str, str] = {}
    for raw in args.header or ():
        try:
            name, value = parse_header(raw)
        except ValueError as exc:  # its message never holds the value
            raise _CatalogError(str(exc)) from None
        headers[name] = value
    # the SDK and httpx log through `logging`: none of it reaches the terminal
    root = logging.getLogger()
    root.handlers[:] = [logging.NullHandler()]
    root.setLevel(logging.CRITICAL)
    try:
        return asyncio.run(fetch_tools(args.url, headers, mode=args.mode, timeout=args.timeout))
    except PinError as exc:
        raise _CatalogError(str(exc)) from None


def _catalog(args: argparse.Namespace) -> Catalog:
    from authz.config.source import ConfigError, load_config

    root = _config_dir(args)
    if args.url is None and args.header:
        raise _CatalogError("--header: only with --url")
    try:
        config = load_config(root)
    except ConfigError as exc:
        raise _CatalogError(f"invalid configuration: {exc}") from None
    live = _live(args) if args.url is not None else None
    if live is None and config.pins is None and not config.overrides:
        raise _CatalogError(
            f"{root}: no tools to list: no {LOCK_FILE} (pin them: mcp-authz pin) and no "
            f"{OVERRIDES_FILE}; or list the upstream's tools live with --url"
        )
    return build_catalog(
        grants=all_grants(config.grants),
        policies=config.policies,
        judged=config.classes,
        lock=config.pins,
        overrides=config.overrides,
        live=live,
    )


def _cmd_catalog(args: argparse.Namespace) -> int:
    try:
        catalog = _catalog(args)
    except _CatalogError as exc:
        print(f"mcp-authz catalog: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(catalog_document(catalog), indent=2, ensure_ascii=False))
    else:
        print(render_table(catalog))
    return 0


def add_catalog_parser(sub: Any) -> None:
    """Register `mcp-authz catalog` on the command line's subparsers."""
    catalog = sub.add_parser(
        "catalog",
        help="list every tool by class and risk, which grants can call it, and the blind spots",
        description=__doc__.split("\n\n", 1)[0] if __doc__ else None,
    )
    catalog.add_argument("--config", help="configuration directory (default $MCP_AUTHZ_CONFIG)")
    catalog.add_argument(
        "--url",
        help=f"list the upstream's tools live from its MCP endpoint (http://HOST/mcp) "
        f"instead of {LOCK_FILE}",
    )
    catalog.add_argument(
        "-H",
        "--header",
        action="append",
        metavar="'NAME: VALUE'",
        help="with --url: an HTTP header for every request to the upstream (repeatable); "
        "values are never printed",
    )
    catalog.add_argument(
        "--mode",
        choices=MODES,
        default="auto",
        help="with --url: protocol era (default auto)",
    )
    catalog.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"with --url: seconds for the whole listing (default {DEFAULT_TIMEOUT:g})",
    )
    catalog.add_argument("--json", action="store_true", help="print JSON for machines")
    catalog.set_defaults(func=_cmd_catalog)
