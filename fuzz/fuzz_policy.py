"""Fuzz target: `load_policy` on arbitrary documents, then `decide` with what it loaded.

Policy files are operator input, but a bad one must be reported, never crash the loader
(the sidecar keeps its last good set only if the reload fails cleanly). Invariants:
- `load_policy` raises only `PolicyError`, with at least one ($-path, message) problem;
- a loaded policy hashes exactly the bytes given, and decides each of a few fixed requests
  without raising, with a well-formed, deterministic Decision.

Run through `make fuzz` (see fuzz/README.md), or directly:
    .venv/bin/python fuzz/fuzz_policy.py fuzz/corpus/policy -dict=fuzz/policy.dict
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any

import atheris
import pydantic  # noqa: F401  (imported before instrumentation: only authz is instrumented)

with atheris.instrument_imports(include=["authz", "_harness"]):
    from _harness import check_decision

    from authz.model import McpRequest
    from authz.policy import PolicyError, load_policy

ARGUMENTS: list[dict[str, Any]] = [
    {},
    {"prompt": "a cat", "n": 2, "size": "small", "tags": ["a", 1], "opts": {"seed": 7}},
    {"prompt": None, "n": -1.5, "a": {"b": {"c": "x"}}, "returnBase64": True},
    {"n": 10**30, "quality": "hd", "model": "pro", "x": [[], {}]},
]
TOOLS = ["t", "a", "image.generate.gemini", "image.generate.openai", "unlisted"]
REQUESTS = [
    McpRequest("tools/call", 1, False, {"name": tool, "arguments": args}, tool, args, session)
    for tool in TOOLS
    for args in ARGUMENTS
    for session in (None, "s-1")
] + [McpRequest("tools/list", 2, False), McpRequest("notifications/initialized", None, True)]


def test_one_input(data: bytes) -> None:
    try:
        policy = load_policy(data, name="fuzz")
    except PolicyError as err:
        if not err.problems or not all(path.startswith("$") for path, _ in err.problems):
            raise AssertionError(f"a PolicyError without $-paths: {err.problems!r}") from err
        str(err)
        return
    if policy.content_hash != hashlib.sha256(data).hexdigest():
        raise AssertionError("content_hash is not the sha256 of the document")
    for request in REQUESTS:
        check_decision(policy, request)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
