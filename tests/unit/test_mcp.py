"""Strict MCP/JSON-RPC parsing: table of accepted and rejected bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp.shared.inbound import decode_header_value as sdk_decode_header_value
from mcp_types.methods import SPEC_CLIENT_METHODS, SPEC_CLIENT_NOTIFICATION_METHODS

from authz.mcp import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_DEPTH,
    MAX_ID_BYTES,
    METHOD_NOT_FOUND,
    NOTIFICATION_METHODS,
    PARSE_ERROR,
    REQUEST_METHODS,
    RESPONSE_METHOD,
    McpParseError,
    check_mirror_headers,
    decode_header_value,
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
    ("very deep", b"[" * 100_000 + b"]" * 100_000, INVALID_REQUEST),  # too many values
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
    ("method title case", b'{"jsonrpc":"2.0","id":1,"method":"Tools/Call"}', METHOD_NOT_FOUND),
    ("method upper case", b'{"jsonrpc":"2.0","id":1,"method":"TOOLS/LIST"}', METHOD_NOT_FOUND),
    ("method trailing space", b'{"jsonrpc":"2.0","id":1,"method":"ping "}', METHOD_NOT_FOUND),
    ("method escaped nul", b'{"jsonrpc":"2.0","id":1,"method":"ping\\u0000"}', METHOD_NOT_FOUND),
    ("case variant", b'{"jsonrpc":"2.0","id":1,"method":"Tools/List"}', METHOD_NOT_FOUND),
    ("space in method", b'{"jsonrpc":"2.0","id":1,"method":"tools/list "}', METHOD_NOT_FOUND),
    ("non-ascii method", b'{"jsonrpc":"2.0","id":1,"method":"tools/l\\u0131st"}', METHOD_NOT_FOUND),
    ("reserved rpc method", b'{"jsonrpc":"2.0","id":1,"method":"rpc.discover"}', METHOD_NOT_FOUND),
    (
        "notification method as request",
        b'{"jsonrpc":"2.0","id":1,"method":"notifications/initialized"}',
        METHOD_NOT_FOUND,
    ),
    ("request method as notification", b'{"jsonrpc":"2.0","method":"ping"}', METHOD_NOT_FOUND),
    (
        "_meta not an object",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":"x"}}',
        INVALID_PARAMS,
    ),
    (
        "_meta null",
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","_meta":null}}',
        INVALID_PARAMS,
    ),
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


BAD_TOOL_NAMES = [
    "image.generate.openai ",
    " image.generate.openai",
    "image generate",
    "image.generate.openai\t",
    "image.generate.openai\n",
    "image.generate.open\u200bai",  # zero-width space
    "image.generate.open\u200dai",  # zero-width joiner
    "image.generate.op\u0435nai",  # Cyrillic ie
    "\uff49mage.generate.openai",  # fullwidth i
    "image.generate.openai\u00a0",  # no-break space
    "image.generate.openai\x00",
    "image/generate/openai",
    "image.generate.openai,x",
    "\u0661",  # Arabic-Indic digit one: a Unicode digit, not [0-9]
    "a" * 129,
]


@pytest.mark.parametrize("name", BAD_TOOL_NAMES)
def test_tool_names_outside_the_spec_charset_are_invalid_params(name: str) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name}}
    ).encode()
    with pytest.raises(McpParseError) as info:
        parse_message(body)
    assert info.value.code == INVALID_PARAMS
    assert info.value.request_id == 3


@pytest.mark.parametrize("name", ["a", "A-Z_0.9", "image.generate.gemini", "x" * 128, "..", "-"])
def test_tool_names_in_the_spec_charset_are_accepted(name: str) -> None:
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": name}}
    ).encode()
    assert parse_message(body).tool == name


SUBJECT_PARAMS: dict[str, dict[str, Any]] = {
    "tools/call": {"name": "t"},
    "prompts/get": {"name": "p"},
    "resources/read": {"uri": "file:///a"},
    "resources/subscribe": {"uri": "file:///a"},
    "completion/complete": {"ref": {"type": "ref/prompt", "name": "p"}},
}
"""The least `params` of the methods whose subject the parser reads."""


@pytest.mark.parametrize("method", sorted(REQUEST_METHODS))
def test_every_mcp_request_method_is_accepted(method: str) -> None:
    params = SUBJECT_PARAMS.get(method, {})
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    assert parse_message(body.encode()).method == method


@pytest.mark.parametrize("method", sorted(NOTIFICATION_METHODS))
def test_every_mcp_notification_method_is_accepted(method: str) -> None:
    request = parse_message(json.dumps({"jsonrpc": "2.0", "method": method}).encode())
    assert request.is_notification and request.method == method


def test_meta_object_is_passed_through() -> None:
    request = parse_message(
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a",'
        b'"_meta":{"name":"b","arguments":{"x":1},"progressToken":1}}}'
    )
    assert request.tool == "a" and request.arguments == {}


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
        ({"mcp-name": "=?base64?aW1hZ2UuZ2VuZXJhdGUuZ2VtaW5p?="}, True),
        ({"mcp-name": "=?base64?aW1hZ2UuZ2VuZXJhdGUub3BlbmFp?="}, False),  # openai
        ({"mcp-name": "image.generate.gemini,image.generate.gemini"}, False),  # sent twice
        ({"mcp-method": "tools/call,tools/call"}, False),
    ],
)
def test_mirror_headers(headers: dict[str, str], ok: bool) -> None:
    request = parse_message(CALL)
    assert (check_mirror_headers(request, headers) is None) is ok


def test_mcp_name_on_method_without_name() -> None:
    request = parse_message(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}')
    assert check_mirror_headers(request, {"mcp-name": "x"}) is not None
    assert check_mirror_headers(request, {"mcp-method": "tools/list"}) is None


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("plain", "plain"),
        ("=?base64?aMOp?=", "h\u00e9"),
        ("=?base64?aMOp", "=?base64?aMOp"),  # no sentinel: verbatim
        ("=?base64?aMOq?=", "h\u00ea"),
        ("=?base64?aMO?=", None),  # bad padding
        ("=?base64?aMOp!?=", None),  # not base64
        ("=?base64?aMOr?=", "h\u00eb"),
        ("=?base64?aR==?=", None),  # non-canonical (trailing bits set)
        ("=?base64?/w==?=", None),  # not UTF-8
        ("=?base64??=", ""),
    ],
)
def test_decode_header_value_like_the_sdk(value: str, decoded: str | None) -> None:
    assert decode_header_value(value) == decoded
    assert sdk_decode_header_value(value) == decoded  # the upstream reads it the same way


def test_known_methods_cover_the_sdk() -> None:
    """Every client method the upstream's SDK serves is known here (an SDK upgrade that adds
    one fails this test instead of being denied silently)."""
    assert set(SPEC_CLIENT_METHODS) <= REQUEST_METHODS
    assert set(SPEC_CLIENT_NOTIFICATION_METHODS) <= NOTIFICATION_METHODS


@pytest.mark.parametrize(
    ("body", "method", "notification"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/execute"}', "tools/execute", False),
        (
            b'{"jsonrpc":"2.0","method":"notifications/tools/call"}',
            "notifications/tools/call",
            True,
        ),
        (
            b'{"jsonrpc":"2.0","id":"x","method":"vendor.ext/do_thing"}',
            "vendor.ext/do_thing",
            False,
        ),
    ],
)
def test_well_formed_unknown_methods_reach_the_policy(
    body: bytes, method: str, notification: bool
) -> None:
    """Unknown but well-formed methods are parsed; the policy's `methods` section decides."""
    request = parse_message(body)
    assert request.method == method
    assert request.is_notification is notification
    assert request.tool is None


# -- the id bound (MAX_ID_BYTES) -----------------------------------------------------------


def _ping(rid: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + rid + b',"method":"ping"}'


@pytest.mark.parametrize(
    ("rid", "accepted"),
    [
        (json.dumps("i" * MAX_ID_BYTES).encode(), True),
        (json.dumps("i" * (MAX_ID_BYTES + 1)).encode(), False),
        (json.dumps("\u20ac" * 85, ensure_ascii=False).encode(), True),  # 255 bytes
        (json.dumps("\u20ac" * 86, ensure_ascii=False).encode(), False),  # 258 bytes
        (json.dumps("\u20ac" * 86).encode(), False),  # the same, escaped: 86 characters
        (b"-" + b"9" * 63, True),  # the longest integer literal the reader takes
    ],
)
def test_ids_are_at_most_256_bytes(rid: bytes, accepted: bool) -> None:
    for body in (_ping(rid), b'{"jsonrpc":"2.0","id":' + rid + b',"result":{}}'):
        if accepted:
            assert parse_message(body).id == json.loads(rid)
            continue
        with pytest.raises(McpParseError) as info:
            parse_message(body)
        assert info.value.code == INVALID_REQUEST
        assert info.value.message == f'invalid request: "id" is longer than {MAX_ID_BYTES} bytes'
        assert info.value.request_id is None  # an over-long id is never echoed


def test_huge_integer_ids_are_refused_before_any_conversion() -> None:
    with pytest.raises(McpParseError) as info:
        parse_message(_ping(b"9" * 5000))
    assert info.value.code == PARSE_ERROR
    assert "longer than 64 characters" in info.value.message


def test_an_over_long_id_is_not_echoed_in_other_errors() -> None:
    body = b'{"jsonrpc":"1.0","id":"' + b"i" * 300 + b'","method":"ping"}'
    with pytest.raises(McpParseError) as info:
        parse_message(body)
    assert info.value.code == INVALID_REQUEST and info.value.request_id is None


# -- the subject of a content request ------------------------------------------------------


def _content(method: str, params: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}).encode()


@pytest.mark.parametrize(
    ("method", "params", "resource", "prompt", "arguments"),
    [
        ("resources/read", {"uri": "file:///a b"}, "file:///a b", None, {}),
        ("resources/read", {"uri": ""}, "", None, {}),
        ("resources/subscribe", {"uri": "docs://x"}, "docs://x", None, {}),
        ("prompts/get", {"name": "p"}, None, "p", {}),
        (
            "prompts/get",
            {"name": "p", "arguments": {"a": "1", "b": ""}},
            None,
            "p",
            {"a": "1", "b": ""},
        ),
        (
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "p"}, "argument": {"name": "a", "value": "x"}},
            None,
            "p",
            {},
        ),
        (
            "completion/complete",
            {
                "ref": {"type": "ref/resource", "uri": "db://{t}"},
                "argument": {"name": "t", "value": ""},
            },
            "db://{t}",
            None,
            {},
        ),
    ],
)
def test_a_content_request_names_its_subject(
    method: str, params: Any, resource: str | None, prompt: str | None, arguments: Any
) -> None:
    request = parse_message(_content(method, params))
    assert (request.resource, request.prompt, dict(request.arguments)) == (
        resource,
        prompt,
        arguments,
    )
    assert request.is_content and request.tool is None


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("resources/read", {}, '"params.uri" must be a string'),
        ("resources/read", {"uri": 5}, '"params.uri" must be a string'),
        ("resources/read", {"uri": None}, '"params.uri" must be a string'),
        ("resources/read", {"uri": ["file:///a"]}, '"params.uri" must be a string'),
        ("resources/subscribe", {"uri": {"href": "x"}}, '"params.uri" must be a string'),
        ("prompts/get", {}, '"params.name" must be a string'),
        ("prompts/get", {"name": 1}, '"params.name" must be a string'),
        ("prompts/get", {"name": "p", "arguments": None}, "must be an object of strings"),
        ("prompts/get", {"name": "p", "arguments": ["a"]}, "must be an object of strings"),
        ("prompts/get", {"name": "p", "arguments": {"n": 5}}, "must be an object of strings"),
        ("prompts/get", {"name": "p", "arguments": {"n": {"x": "y"}}}, "object of strings"),
        ("completion/complete", {}, '"params.ref" must be'),
        ("completion/complete", {"ref": "p"}, '"params.ref" must be'),
        ("completion/complete", {"ref": {"type": "ref/tool", "name": "t"}}, '"params.ref"'),
        ("completion/complete", {"ref": {"type": "ref/prompt", "uri": "x"}}, '"params.ref"'),
        ("completion/complete", {"ref": {"type": "ref/resource", "name": "x"}}, '"params.ref"'),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": 3}}, '"params.ref"'),
        ("completion/complete", {"ref": {"name": "p"}}, '"params.ref"'),
    ],
)
def test_a_content_request_without_a_usable_subject_is_invalid_params(
    method: str, params: Any, fragment: str
) -> None:
    with pytest.raises(McpParseError) as info:
        parse_message(_content(method, params))
    assert info.value.code == INVALID_PARAMS and info.value.request_id == 9
    assert fragment in info.value.message


def test_unsubscribing_is_plumbing_and_needs_no_subject() -> None:
    request = parse_message(_content("resources/unsubscribe", {}))
    assert not request.is_content and request.resource is None
