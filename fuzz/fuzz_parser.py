"""Fuzz target: the request path, `parse_message` → `check_mirror_headers` → `decide`.

The input is the raw HTTP body. A violated invariant raises, and atheris reports a crash:
- `parse_message` raises only `McpParseError`, with a code the parser documents;
- what it accepts, the upstream's parsers (`json.loads`, pydantic's `from_json`) read to
  the same value, and a plain re-serialisation parses to the same request;
- mirror headers equal to the body pass; any other value is a mismatch;
- `decide` never raises and returns a well-formed, deterministic Decision for each of a
  few fixed policies (see `_harness.py`).

Run through `make fuzz` (see fuzz/README.md), or directly:
    .venv/bin/python fuzz/fuzz_parser.py fuzz/corpus/parser -dict=fuzz/mcp.dict
"""

from __future__ import annotations

import json
import sys
from typing import Any

import atheris
import pydantic  # noqa: F401  (imported before instrumentation: only authz is instrumented)
import pydantic_core

with atheris.instrument_imports(include=["authz", "_harness"]):
    from _harness import canon, check_decision, fixed_policies

    from authz.mcp import (
        INVALID_PARAMS,
        INVALID_REQUEST,
        METHOD_NOT_FOUND,
        PARSE_ERROR,
        McpParseError,
        check_mirror_headers,
        parse_json,
        parse_message,
    )
    from authz.model import McpRequest

CODES = frozenset({PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS})
POLICIES = fixed_policies()


def request_key(request: McpRequest) -> tuple[Any, ...]:
    return (
        request.method,
        type(request.id).__name__,
        request.id,
        request.is_notification,
        request.tool,
        canon(request.params),
        canon(request.arguments),
        request.session_id,
    )


def mirrored_name(request: McpRequest) -> str | None:
    member = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
    name = request.params.get(member[request.method]) if request.method in member else None
    return name if isinstance(name, str) else None


def test_one_input(data: bytes) -> None:
    try:
        request = parse_message(data, session_id="s-1")
    except McpParseError as exc:
        if exc.code not in CODES:
            raise AssertionError(f"undocumented error code {exc.code}") from exc
        return

    value = parse_json(data)
    if canon(json.loads(data)) != canon(value):
        raise AssertionError("json.loads reads the accepted body differently")
    if canon(pydantic_core.from_json(data)) != canon(value):
        raise AssertionError("pydantic_core.from_json reads the accepted body differently")
    again = parse_message(json.dumps(value).encode(), session_id="s-1")
    if request_key(again) != request_key(request):
        raise AssertionError("a plain re-serialisation parses to a different request")

    headers = {"mcp-method": request.method}
    name = mirrored_name(request)
    if name is not None and not name.startswith("=?base64?"):  # the SDK would decode that
        headers["mcp-name"] = name
    if check_mirror_headers(request, headers) is not None:
        raise AssertionError(f"headers equal to the body were refused: {headers!r}")
    if check_mirror_headers(request, {"mcp-method": request.method + " "}) is None:
        raise AssertionError("a different Mcp-Method header was accepted")
    if check_mirror_headers(request, {"mcp-name": (name or "") + "x"}) is None:
        raise AssertionError("a different Mcp-Name header was accepted")

    for policy in POLICIES:
        decision = check_decision(policy, request)
        if decision != check_decision(policy, again):
            raise AssertionError("a re-serialisation was decided differently")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
