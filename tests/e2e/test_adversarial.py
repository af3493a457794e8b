"""The adversarial corpus (tests/e2e/corpus.py), sent as raw bytes through the real Envoy.

For every entry: the client gets exactly the expected answer (status, JSON-RPC code or
`[POLICY DENIED]` tool result, headers), and the upstream's own execution record grows by
exactly the tools the entry lists (nothing, for every attack), as the grant it lists.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from authz.config.grants import hash_token
from authz.devstack.stack import LOOPBACK, Stack
from tests.e2e import corpus
from tests.e2e.conftest import executed, forwarded, wait_until_envoy_idle
from tests.e2e.corpus import CORPUS, DENIED, GEMINI, Case, Reply

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs" / "security.md"
BEGIN, END = "<!-- corpus:begin -->", "<!-- corpus:end -->"

_ran: dict[str, list[tuple[str, str | None]]] = {}
"""(tool, grant) of every execution the cases run so far expected, in order, per transport."""


def write_config(root: Path) -> Path:
    (root / "policies").mkdir(parents=True, exist_ok=True)
    for name, doc in corpus.POLICIES.items():
        (root / "policies" / f"{name}.json").write_text(json.dumps(doc, indent=2))
    grants = [
        {"id": gid, "label": gid, "token_sha256": hash_token(corpus.token_for(gid)), "policy": pol}
        for gid, pol in corpus.GRANTS.items()
    ]
    (root / "grants.json").write_text(json.dumps({"version": "1", "grants": grants}))
    return root


@pytest.fixture(scope="module")
def adv_stack(tmp_path_factory: pytest.TempPathFactory, transport: str) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("adversarial")
    record = base / "executed.jsonl"
    record.touch()
    the_stack = Stack(
        config_dir=write_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        transport=transport,
    )
    with the_stack:
        yield the_stack


# -- raw HTTP -----------------------------------------------------------------------------------


def exchange(port: int, data: bytes, *, half_close: bool = False, timeout: float = 10.0) -> Reply:
    """Send raw bytes (from a thread, so a large body cannot block the reply) and read to EOF."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:

        def send() -> None:
            try:
                sock.sendall(data)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # Envoy may answer (413, 400) and close before reading everything

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        received = bytearray()
        while not _complete(bytes(received)):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        sender.join(timeout)
    return parse_reply(bytes(received))


def _complete(raw: bytes) -> bool:
    """A whole final reply is in: stop reading (Envoy delays closing after an error reply)."""
    return _parse(raw, partial=True) is not None


def _head(raw: bytes) -> tuple[int, dict[str, str], bytes] | None:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers[key] = f"{headers[key]},{value.strip()}" if key in headers else value.strip()
    return int(lines[0].split()[1]), headers, rest


def parse_reply(raw: bytes) -> Reply:
    """The final reply in `raw`, read to EOF (status 0 when nothing came back)."""
    return _parse(raw, partial=False) or Reply(0, {}, b"")


def _parse(raw: bytes, *, partial: bool) -> Reply | None:
    """The final reply (interim 1xx replies skipped); with `partial`, None while incomplete."""
    while raw:
        parsed = _head(raw)
        if parsed is None:
            return None
        status, headers, rest = parsed
        if 100 <= status < 200:  # interim (100 Continue): the real reply follows
            raw = rest
            continue
        if headers.get("transfer-encoding") == "chunked":
            if partial and not rest.endswith(b"0\r\n\r\n"):
                return None
            return Reply(status, headers, _dechunk(rest))
        if "content-length" in headers:
            length = int(headers["content-length"])
            if partial and len(rest) < length:
                return None
            return Reply(status, headers, rest[:length])
        return None if partial else Reply(status, headers, rest)
    return None


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


# -- the corpus -------------------------------------------------------------------------------


def check_reply(c: Case, reply: Reply) -> None:
    assert reply.status == c.status, reply
    for name, prefix in c.headers:
        assert reply.headers.get(name, "").startswith(prefix), (name, reply.headers)
    decided = "x-mcp-authz-decision-id" in reply.headers
    if c.by == "none":
        return
    if c.by == "envoy":
        # a local reply of Envoy: the sidecar never decided, nothing was forwarded
        assert not decided, reply
        assert DENIED.encode() not in reply.body
        return
    if c.by == "upstream":
        # the sidecar allowed it (its decision id comes back) and the upstream answered
        assert decided, reply
        assert DENIED.encode() not in reply.body, reply
        if c.marker is not None:
            assert c.marker.encode() in reply.body, reply
        if c.executes:
            result = reply.json()["result"]
            assert result["isError"] is False, result
        return
    # the sidecar denied it: a JSON-RPC error or a [POLICY DENIED] tool result
    assert decided, reply
    assert reply.headers["content-type"] == "application/json"
    message = reply.json()
    if c.code is not None:
        error = message["error"]
        assert error["code"] == c.code, error
        text = error["message"]
    else:
        result = message["result"]
        assert result["isError"] is True, result
        text = result["content"][0]["text"]
    assert text.startswith(DENIED), text
    if c.marker is not None:
        assert c.marker in text, text


@pytest.mark.parametrize("c", CORPUS, ids=[c.id for c in CORPUS])
def test_corpus(adv_stack: Stack, c: Case) -> None:
    before = executed(adv_stack)
    sent = forwarded(adv_stack)
    reply = exchange(adv_stack.ports.envoy, c.request, half_close=c.half_close)
    if c.by == "none":
        # nothing answered: a request Envoy forwarded anyway has landed (or was reset) once
        # Envoy is idle, and Envoy's own count says whether it forwarded one at all
        wait_until_envoy_idle(adv_stack)
    assert forwarded(adv_stack) - sent == (1 if c.by == "upstream" else 0)
    after = executed(adv_stack)
    assert after[: len(before)] == before
    new = after[len(before) :]
    _ran.setdefault(adv_stack.transport, []).extend((tool, c.grant) for tool in c.executes)
    assert [e["tool"] for e in new] == list(c.executes), new
    assert all(e["grant"] == c.grant and not e["authorization_present"] for e in new), new
    for tool in c.forbidden:
        assert tool not in {e["tool"] for e in after}, f"{tool} executed"
    check_reply(c, reply)


def test_record_holds_only_the_positive_controls(adv_stack: Stack) -> None:
    """After the corpus (run before this test): the upstream ran exactly the positive
    controls, as their grants, and nothing else, not even late (Envoy forwarded exactly one
    request per positive control, and has nothing in flight any more)."""
    wait_until_envoy_idle(adv_stack)
    record = [(e["tool"], e["grant"]) for e in executed(adv_stack)]
    assert record == _ran.get(adv_stack.transport, [])
    assert {tool for tool, _ in record} <= {GEMINI}


# -- the corpus is well-formed and documented ---------------------------------------------------


def test_corpus_is_large_and_ids_are_unique() -> None:
    ids = [c.id for c in CORPUS]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)
    assert any(c.executes for c in CORPUS) and any(c.forbidden for c in CORPUS)


def test_docs_table_matches_the_corpus() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, "docs/security.md lacks the corpus markers"
    section = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"
    assert section == corpus.render_markdown(), (
        "docs/security.md is out of date: regenerate with `python -m tests.e2e.corpus`"
    )
    for c in CORPUS:
        assert f"`{c.id}`" in section
