"""Strict MCP/JSON-RPC parsing: table of accepted and rejected bodies."""

from __future__ import annotations

import pytest

from authz.mcp import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_DEPTH,
    PARSE_ERROR,
    RESPONSE_METHOD,
    McpParseError,
    check_mirror_headers,
    parse_message,
)

CALL = (
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
    b'"params":{"name":"image.generate.gemini","arguments":{"prompt":"a cat"}}}'
)

REJECTED: list[tuple[str, bytes, int]] = [
    ("empty", b"", PARSE_ERROR),
    ("not json", b"hello", PARSE_ERROR),
    ("duplicate top-level key", b'{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}', PARSE_ERROR),
    (
        "duplicate key in params",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"a","name":"b","arguments":{}}}',
        PARSE_ERROR,
    ),
    (
        "duplicate key in arguments",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"a","arguments":{"n":1,"n":2}}}',
        PARSE_ERROR,
    ),
    (
        "duplicate key via escape",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","\\u006dethod":"tools/call"}',
        PARSE_ERROR,
    ),
    ("invalid utf-8", b'{"jsonrpc":"2.0","id":1,"method":"ping\xff"}', PARSE_ERROR),
    ("utf-8 bom", b'\xef\xbb\xbf{"jsonrpc":"2.0","id":1,"method":"ping"}', PARSE_ERROR),
    ("utf-16", '{"jsonrpc":"2.0","id":1,"method":"ping"}'.encode("utf-16"), PARSE_ERROR),
    ("lone surrogate", b'{"jsonrpc":"2.0","id":1,"method":"ping\\ud800"}', PARSE_ERROR),
    ("NaN", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', PARSE_ERROR),
    ("Infinity", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":-Infinity}}', PARSE_ERROR),
    (
        "float overflow",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1e999}}',
        PARSE_ERROR,
    ),
    (
        "overlong integer",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":' + b"9" * 5000 + b"}}",
        PARSE_ERROR,
    ),
    ("trailing garbage", CALL + b"x", PARSE_ERROR),
    ("two messages", CALL + CALL, PARSE_ERROR),
    ("comment", b'{"jsonrpc":"2.0",/*x*/"id":1,"method":"ping"}', PARSE_ERROR),
    ("single quotes", b"{'jsonrpc':'2.0','id':1,'method':'ping'}", PARSE_ERROR),
    ("control char in string", b'{"jsonrpc":"2.0","id":1,"method":"pi\x01ng"}', PARSE_ERROR),
    (
        "too deep",
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":'
        + b"[" * MAX_DEPTH
        + b"]" * MAX_DEPTH
        + b"}}",
        PARSE_ERROR,
    ),
    ("very deep", b"[" * 100_000 + b"]" * 100_000, PARSE_ERROR),
    ("batch", b"[" + CALL + b"]", INVALID_REQUEST),
    (
        "batch hiding a call",
        b'[{"jsonrpc":"2.0","id":1,"method":"ping"},' + CALL + b"]",
        INVALID_REQUEST,
    ),
    ("empty batch", b"[]", INVALID_REQUEST),
    ("scalar", b"42", INVALID_REQUEST),
    ("missing jsonrpc", b'{"id":1,"method":"ping"}', INVALID_REQUEST),
    ("wrong jsonrpc", b'{"jsonrpc":"1.0","id":1,"method":"ping"}', INVALID_REQUEST),
    ("numeric jsonrpc", b'{"jsonrpc":2.0,"id":1,"method":"ping"}', INVALID_REQUEST),
    ("null id", b'{"jsonrpc":"2.0","id":null,"method":"ping"}', INVALID_REQUEST),
    ("float id", b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', INVALID_REQUEST),
    ("bool id", b'{"jsonrpc":"2.0","id":true,"method":"ping"}', INVALID_REQUEST),
    ("object id", b'{"jsonrpc":"2.0","id":{},"method":"ping"}', INVALID_REQUEST),
    ("method not string", b'{"jsonrpc":"2.0","id":1,"method":5}', INVALID_REQUEST),
    ("empty method", b'{"jsonrpc":"2.0","id":1,"method":""}', INVALID_REQUEST),
    (
        "params array",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["a"]}',
        INVALID_REQUEST,
    ),
    ("params null", b'{"jsonrpc":"2.0","id":1,"method":"ping","params":null}', INVALID_REQUEST),
    ("extra member", b'{"jsonrpc":"2.0","id":1,"method":"ping","tool":"x"}', INVALID_REQUEST),
    (
        "notification tools/call",
        b'{"jsonrpc":"2.0","method":"tools/call","params":{"name":"a"}}',
        INVALID_REQUEST,
    ),
    (
        "tools/call without name",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}',
        INVALID_PARAMS,
    ),
    (
        "tools/call name not string",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["a"]}}',
        INVALID_PARAMS,
    ),
    (
        "arguments not object",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":[1]}}',
        INVALID_PARAMS,
    ),
    ("response with both", b'{"jsonrpc":"2.0","id":1,"result":{},"error":{}}', INVALID_REQUEST),
    ("response without id", b'{"jsonrpc":"2.0","result":{}}', INVALID_REQUEST),
    ("neither method nor result", b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),
]


@pytest.mark.parametrize(
    ("body", "code"), [(b, c) for _, b, c in REJECTED], ids=[n for n, _, _ in REJECTED]
)
def test_rejected(body: bytes, code: int) -> None:
    with pytest.raises(McpParseError) as info:
        parse_message(body)
    assert info.value.code == code
    assert info.value.message


def test_tool_call() -> None:
    request = parse_message(CALL, session_id="s1")
    assert request.method == "tools/call"
    assert request.id == 7
    assert request.tool == "image.generate.gemini"
    assert request.arguments == {"prompt": "a cat"}
    assert request.session_id == "s1"
    assert not request.is_notification
    assert request.is_tool_call


def test_escaped_names_are_decoded_once() -> None:
    body = (
        b'{"jsonrpc":"2.0","id":"a","method":"tools\\/call",'
        b'"params":{"name":"image.generate.\\u0067emini"}}'
    )
    request = parse_message(body)
    assert request.method == "tools/call"
    assert request.tool == "image.generate.gemini"
    assert request.arguments == {}


def test_notification_and_response() -> None:
    note = parse_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert note.is_notification and note.id is None and note.tool is None
    response = parse_message(b'{"jsonrpc":"2.0","id":"x","result":{}}')
    assert response.method == RESPONSE_METHOD


def test_error_echoes_usable_id() -> None:
    with pytest.raises(McpParseError) as info:
        parse_message(b'{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{}}')
    assert info.value.request_id == "abc"


@pytest.mark.parametrize(
    ("headers", "ok"),
    [
        ({}, True),
        ({"mcp-method": "tools/call"}, True),
        ({"mcp-method": "tools/call", "mcp-name": "image.generate.gemini"}, True),
        ({"mcp-method": "tools/list"}, False),
        ({"mcp-method": "TOOLS/CALL"}, False),
        ({"mcp-method": "tools/call", "mcp-name": "image.generate.openai"}, False),
        ({"mcp-name": "image.generate.gemini "}, False),
    ],
)
def test_mirror_headers(headers: dict[str, str], ok: bool) -> None:
    request = parse_message(CALL)
    assert (check_mirror_headers(request, headers) is None) is ok


def test_mcp_name_on_method_without_name() -> None:
    request = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    assert check_mirror_headers(request, {"mcp-name": "x"}) is not None
    assert check_mirror_headers(request, {"mcp-method": "tools/list"}) is None
