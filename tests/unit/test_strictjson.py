"""The one strict JSON reader: every rule, and the same rules in all four places it reads.

The table runs each rule against MCP bodies, policies, grants.json and approvers.json: the
same document, with the same defect in the same spot, is refused by all four with the same
message (and, in files, the JSON path where it is known).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from authz import strictjson
from authz.config.approvers import ApproversError, load_approvers
from authz.config.grants import GrantsError, hash_token, load_grants
from authz.mcp import INVALID_REQUEST, MAX_VALUES, PARSE_ERROR, McpParseError, parse_message
from authz.policy import PolicyError, load_policy
from authz.strictjson import (
    MAX_DEPTH,
    StrictJsonError,
    TooManyValues,
    json_path,
    loads,
    rough_values,
    value_bound,
)

SLOT = b"@@"
"""Where a document takes one JSON value (a string when the document is valid)."""

DOCUMENTS: dict[str, bytes] = {
    "mcp": b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
    b'"params":{"name":"t","arguments":{"x":@@}}}',
    "policy": b'{"version":"1","description":@@}',
    "grants": b'{"version":"1","grants":[{"id":"a","label":@@,"policy":"p","token_sha256":"'
    + hash_token("t").encode()
    + b'"}]}',
    "approvers": b'{"version":"1","approvers":[{"id":"a","label":@@,"token_sha256":"'
    + hash_token("t").encode()
    + b'"}]}',
}
SLOT_PATH = {
    "mcp": "$.params.arguments.x",
    "policy": "$.description",
    "grants": "$.grants[0].label",
    "approvers": "$.approvers[0].label",
}


def read(reader: str, raw: bytes) -> str | None:
    """None when `reader` accepts `raw`, else its message (the MCP code prefixed)."""
    try:
        if reader == "mcp":
            parse_message(raw)
        elif reader == "policy":
            load_policy(raw, name="p")
        elif reader == "grants":
            load_grants(raw)
        else:
            load_approvers(raw)
    except McpParseError as exc:
        return f"{exc.code} {exc.message}"
    except (PolicyError, GrantsError, ApproversError) as exc:
        return str(exc)
    return None


def in_slot(value: bytes) -> Callable[[bytes], bytes]:
    return lambda doc: doc.replace(SLOT, value)


NEST = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)

# (rule, how to break a document, what every reader says, the path files name or None)
RULES: list[tuple[str, Callable[[bytes], bytes], str, str | None]] = [
    (
        "byte-order mark",
        lambda doc: b"\xef\xbb\xbf" + doc.replace(SLOT, b'"ok"'),
        "starts with a byte-order mark (U+FEFF)",
        None,
    ),
    ("invalid UTF-8", in_slot(b'"\xff"'), "not valid UTF-8 at byte", None),
    ("overlong UTF-8", in_slot(b'"\xc0\xaf"'), "not valid UTF-8 at byte", None),
    ("UTF-8 of a surrogate", in_slot(b'"\xed\xa0\x80"'), "not valid UTF-8 at byte", None),
    ("NaN", in_slot(b"NaN"), "NaN is not valid JSON", None),
    ("Infinity", in_slot(b"-Infinity"), "-Infinity is not valid JSON", None),
    ("float overflow", in_slot(b"1e999"), "a number is out of range", None),
    ("overlong number", in_slot(b"1" + b"0" * 64), "a number literal is longer than 64", None),
    ("overlong float", in_slot(b"0." + b"0" * 63), "a number literal is longer than 64", None),
    ("duplicate key", in_slot(b'{"k":1,"k":2}'), "duplicate key 'k'", ".k"),
    ("duplicate key, escaped", in_slot(b'{"k":1,"\\u006b":2}'), "duplicate key 'k'", ".k"),
    ("duplicate in a list", in_slot(b'[0,{"k":1,"k":1}]'), "duplicate key 'k'", "[1].k"),
    ("nesting too deep", in_slot(NEST), f"nesting deeper than {MAX_DEPTH} levels", None),
    ("lone surrogate", in_slot(b'"a\\ud800"'), "a string contains a lone surrogate", ""),
    ("lone low surrogate", in_slot(b'"\\udc00a"'), "a string contains a lone surrogate", ""),
    ("reversed pair", in_slot(b'"\\udc00\\ud800"'), "a string contains a lone surrogate", ""),
    ("surrogate in a key", in_slot(b'{"\\ud800":1}'), "a key contains a lone surrogate", ""),
    ("control character", in_slot(b'"a\x01"'), "invalid JSON at line 1", None),
    ("single quotes", in_slot(b"'ok'"), "invalid JSON at line 1", None),
    ("comment", in_slot(b'"ok"/**/'), "invalid JSON at line 1", None),
    ("trailing comma", in_slot(b'["ok",]'), "invalid JSON at line 1", None),
    ("trailing data", lambda doc: doc.replace(SLOT, b'"ok"') + b"x", "invalid JSON", None),
    ("empty", lambda doc: b"", "invalid JSON at line 1, column 1", None),
]
READERS = list(DOCUMENTS)


@pytest.mark.parametrize("reader", READERS)
def test_the_valid_document_is_read_by_every_reader(reader: str) -> None:
    assert read(reader, DOCUMENTS[reader].replace(SLOT, b'"ok \\ud83d\\ude00"')) is None


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    ("rule", "breaks", "says", "where"), RULES, ids=[rule for rule, *_ in RULES]
)
def test_every_rule_holds_in_every_reader(
    reader: str, rule: str, breaks: Callable[[bytes], bytes], says: str, where: str | None
) -> None:
    message = read(reader, breaks(DOCUMENTS[reader]))
    assert message is not None, f"{reader} accepted a document breaking: {rule}"
    assert says in message, message
    if reader == "mcp":
        assert message.startswith(f"{PARSE_ERROR} parse error: "), message
        return
    if reader != "policy":
        assert message.startswith(f"{reader}.json: "), message
    if where is not None:  # files name the path: the slot, or a member inside it
        assert f"{SLOT_PATH[reader]}{where}: " in message, message
    else:
        assert "$: " in message, message


def test_every_duplicate_is_named_with_its_path() -> None:
    raw = b'{"a":3,"a":{"x":1,"x":2},"b":[{"y":1,"y":2}]}'
    with pytest.raises(StrictJsonError) as info:
        loads(raw)
    assert [loc for loc, _ in info.value.problems] == [("a",), ("a", "x"), ("b", 0, "y")]


def test_a_duplicate_followed_by_other_errors_is_still_named() -> None:
    with pytest.raises(StrictJsonError) as info:
        loads(b'[{"k":1,"k":2},NaN]')
    assert info.value.message.startswith("duplicate key 'k'")


def test_long_keys_are_cut_in_messages() -> None:
    key = "k" * 10_000
    with pytest.raises(StrictJsonError) as info:
        loads(json.dumps({key: 1}).encode()[:-1] + b',"' + key.encode() + b'":2}')
    assert len(info.value.message) < 200 and "…" in info.value.message


def test_messages_never_quote_values() -> None:
    for raw in (b'{"a":1e999}', b'{"a":' + b"7" * 80 + b"}", b'{"a":"\\ud800secret"}'):
        with pytest.raises(StrictJsonError) as info:
            loads(raw)
        assert "secret" not in info.value.message and "777" not in info.value.message


def test_nesting_at_the_limit_is_read() -> None:
    assert loads(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    # brackets inside strings are not nesting
    assert loads(json.dumps(["[" * 200, "{" * 200]).encode()) == ["[" * 200, "{" * 200]


# -- the value bound -----------------------------------------------------------------------


def count_values(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + sum(count_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(count_values(v) for v in value)
    return 1


def has_empty_container(value: Any) -> bool:
    if isinstance(value, dict):
        return not value or any(has_empty_container(v) for v in value.values())
    if isinstance(value, list):
        return not value or any(has_empty_container(v) for v in value)
    return False


TEXT = st.text(alphabet=st.sampled_from('ab,[]{}":\\/ \u00e9\U0001f600\n'), max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=30,
)


@given(value=JSON_VALUES, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_value_bound_is_an_upper_bound_exact_without_empty_containers(
    value: Any, ascii_only: bool, indent: int | None
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode()
    bound = value_bound(raw)
    assert bound >= count_values(value)
    if not has_empty_container(value):
        assert bound == count_values(value)
    assert rough_values(raw) >= bound
    # the limit is exactly the bound
    assert loads(raw, max_values=bound) == value
    with pytest.raises(TooManyValues):
        loads(raw, max_values=bound - 1)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ('["a,b", "c"]', 3),
        ('["\\\\", ","]', 3),  # an escaped backslash closes nothing
        ('["\\"", ","]', 3),  # an escaped quote closes nothing
        ('["\\\\\\"[,", 1]', 3),
        ('{"a,": [1, 2], "[": {}}', 6),  # the empty object counts twice
    ],
)
def test_value_bound_skips_strings(text: str, values: int) -> None:
    assert value_bound(text.encode()) == values


def test_too_many_values_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_parsing(*_: object) -> None:
        raise AssertionError("parsed")

    monkeypatch.setattr(strictjson, "_STRICT", type("D", (), {"decode": no_parsing})())
    flood = b"[" + b",".join([b"[]"] * 350_000) + b"]"
    with pytest.raises(TooManyValues, match=f"more than {MAX_VALUES} JSON values"):
        loads(flood, max_values=MAX_VALUES)
    # many strings: too many values without cutting the text into pieces
    with pytest.raises(TooManyValues):
        loads(b"[" + b",".join([b'""'] * 350_000) + b"]", max_values=MAX_VALUES)
    # the same bytes inside one string are one value: only the bound decides, then parsing
    with pytest.raises(AssertionError, match="parsed"):
        loads(b'"' + flood + b'"', max_values=MAX_VALUES)


def test_files_have_no_value_limit() -> None:
    assert len(loads(b"[" + b",".join([b"0"] * 50_000) + b"]")) == 50_000


def test_mcp_bodies_past_the_value_limit_are_invalid_requests() -> None:
    items = b",".join([b"0"] * MAX_VALUES)
    body = DOCUMENTS["mcp"].replace(SLOT, b"[" + items + b"]")
    with pytest.raises(McpParseError) as info:
        parse_message(body)
    assert info.value.code == INVALID_REQUEST
    assert re.fullmatch(rf"invalid request: more than {MAX_VALUES} JSON values", info.value.message)
    # a prompt of commas is one value
    prompt = b'"' + b"," * (4 * MAX_VALUES) + b'"'
    assert parse_message(DOCUMENTS["mcp"].replace(SLOT, prompt)).tool == "t"


def test_json_path_quoting() -> None:
    assert json_path(("tools", "a'b", "x", 0)) == "$.tools['a\\'b'].x[0]"
    assert json_path(()) == "$"
