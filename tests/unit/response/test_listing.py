"""Listings, pure (authz/response/listing.py): cutting hidden tools, resources, templates and
prompts out of any JSON-RPC message, and finding a listing array in a message read piece by
piece."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.model import Hides, ListingFilter
from authz.response.jsonrpc import Unparsable
from authz.response.listing import ListingScanner, filter_listing, filter_tools

HIDDEN = "image.generate.replicate"


def hide(*names: str) -> Hides:
    return lambda name: name in names


def listing(tools: list[Any], rid: object = 1, **extra: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": {"tools": tools, **extra}})


def tool(name: str) -> dict[str, Any]:
    return {"name": name, "description": f"the {name} tool", "inputSchema": {"type": "object"}}


def cut(text: str, *names: str) -> tuple[str, int]:
    new, removed, _ = filter_tools(text, hide(*names))
    return new, removed


# -- filter_tools ----------------------------------------------------------------------


def test_removes_hidden_tools_and_keeps_every_other_byte() -> None:
    text = listing([tool("a"), tool(HIDDEN), tool("b")], nextCursor="c2")
    new, removed = cut(text, HIDDEN)
    assert removed == 1
    assert json.loads(new) == json.loads(listing([tool("a"), tool("b")], nextCursor="c2"))
    assert new == text.replace(json.dumps(tool(HIDDEN)) + ", ", "")


def test_next_cursor_is_kept_byte_for_byte() -> None:
    cursor_bytes = '"p\\u00e9ge\\/2\\ud83d\\ude00==="'
    text = (
        '{ "jsonrpc":"2.0" , "id" : 7, "result" : { "nextCursor" : '
        + cursor_bytes
        + ' , "tools" : [ {"name":"image.generate.replicate"} ,\n {"name":"x"} ] ,'
        + ' "_meta": {"k": [1, 2.50, "\\""]} } }'
    )
    new, removed = cut(text, HIDDEN)
    assert removed == 1
    assert new.count(cursor_bytes) == 1
    assert '"_meta": {"k": [1, 2.50, "\\""]}' in new
    assert json.loads(new)["result"]["nextCursor"] == "pége/2\U0001f600==="
    assert json.loads(new)["result"]["tools"] == [{"name": "x"}]


def test_nothing_hidden_returns_the_same_text() -> None:
    text = listing([tool("a"), tool("b")], nextCursor="n")
    new, removed, message = filter_tools(text, hide(HIDDEN))
    assert new is text and removed == 0 and message == json.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        listing([tool(HIDDEN)], rid=2),  # another request's answer
        listing([tool(HIDDEN)], rid="1"),
        listing([tool(HIDDEN)], rid=None),
        '{"jsonrpc":"2.0","id":"7","result":{"tools":[{"name":"image.generate.replicate"}]}}',
        '{"result":{"tools":[{"name":"image.generate.replicate"}]}}',  # no id at all
    ],
)
def test_every_message_with_result_tools_is_filtered_whatever_its_id(text: str) -> None:
    new, removed = cut(text, HIDDEN)
    assert removed == 1 and HIDDEN not in new


def test_batches_are_filtered_element_by_element() -> None:
    text = json.dumps(
        [
            {"jsonrpc": "2.0", "id": 1, "result": {"tools": [tool("a"), tool(HIDDEN)]}},
            {"jsonrpc": "2.0", "id": 2, "result": {}},
            {"jsonrpc": "2.0", "id": 3, "result": {"tools": [tool(HIDDEN)]}},
            [{"result": {"tools": [tool(HIDDEN)]}}],  # not a message: a nested array
        ]
    )
    new, removed = cut(text, HIDDEN)
    assert removed == 2
    assert [m for m in json.loads(new)][:3] == [
        {"jsonrpc": "2.0", "id": 1, "result": {"tools": [tool("a")]}},
        {"jsonrpc": "2.0", "id": 2, "result": {}},
        {"jsonrpc": "2.0", "id": 3, "result": {"tools": []}},
    ]


@pytest.mark.parametrize(
    "text",
    [
        '{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}}',
        '{"jsonrpc":"2.0","id":1,"result":{"content":[]}}',
        '{"jsonrpc":"2.0","id":1,"result":{"tools":{"name":"image.generate.replicate"}}}',
        '{"jsonrpc":"2.0","id":1,"result":{"content":{"tools":[{"name":"x"}]}}}',
        '{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}',
        '"a string"',
        "3",
    ],
)
def test_other_messages_are_left_alone(text: str) -> None:
    assert cut(text, HIDDEN) == (text, 0)


@pytest.mark.parametrize("text", ["", "{", '{"id":1,', "nope", '{"a":1}x', "\ud800"])
def test_malformed_json_raises_unparsable(text: str) -> None:
    with pytest.raises(Unparsable):
        filter_tools(text, hide(HIDDEN))


def test_every_shape_of_removal() -> None:
    names = ["a", HIDDEN, "b", HIDDEN, "c"]
    for keep in range(1 << len(names)):
        tools = [{"name": n, "i": i} for i, n in enumerate(names)]
        hidden = {f"{n}{i}" for i, n in enumerate(names) if not keep >> i & 1}
        renamed = [{"name": f"{t['name']}{t['i']}", "i": t["i"]} for t in tools]
        for indent in (None, 2):
            text = json.dumps(
                {"jsonrpc": "2.0", "id": 1, "result": {"tools": renamed}}, indent=indent
            )
            new, removed = cut(text, *hidden)
            kept = [t for t in renamed if t["name"] not in hidden]
            assert removed == len(renamed) - len(kept)
            assert json.loads(new)["result"]["tools"] == kept


def test_hide_all_removes_entries_without_a_name_too() -> None:
    text = listing([tool("a"), {"title": "nameless"}, 3])
    new, removed, _ = filter_tools(text, lambda _name: True)
    assert removed == 3 and json.loads(new)["result"]["tools"] == []


def test_entries_without_a_string_name_are_kept_otherwise() -> None:
    text = listing([{"name": 5}, {"title": "x"}, tool(HIDDEN)])
    new, removed = cut(text, HIDDEN)
    assert removed == 1
    assert json.loads(new)["result"]["tools"] == [{"name": 5}, {"title": "x"}]


def test_duplicate_keys_every_result_and_tools_array_is_filtered() -> None:
    # a parser that keeps the first duplicate and one that keeps the last: neither sees it
    text = (
        '{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"image.generate.replicate"}],'
        '"tools":[{"name":"a"},{"name":"image.generate.replicate"}]},'
        '"result":{"tools":[]}}'
    )
    new, removed = cut(text, HIDDEN)
    assert removed == 2 and HIDDEN not in new
    twice = (
        '{"jsonrpc":"2.0","id":1,"result":{"tools":'
        '[{"name":"image.generate.replicate","name":"x"}]}}'
    )
    new, removed = cut(twice, HIDDEN)
    assert removed == 1 and HIDDEN not in new


def test_escaped_names_and_keys_are_read_as_a_parser_reads_them() -> None:
    text = (
        '{"jsonrpc":"2.0","id":1,"r\\u0065sult":{"t\\u006fols":'
        '[{"n\\u0061me":"image.generate.r\\u0065plicate"}]}}'
    )
    new, removed = cut(text, HIDDEN)
    assert removed == 1 and json.loads(new)["result"]["tools"] == []


def test_large_listing_is_exact() -> None:
    tools = [tool(f"t{i}") for i in range(3000)] + [tool(HIDDEN)]
    random.Random(4).shuffle(tools)
    new, removed = cut(listing(tools, nextCursor="z"), HIDDEN)
    assert removed == 1
    assert len(json.loads(new)["result"]["tools"]) == 3000


# -- ListingScanner: a message read piece by piece ------------------------------------------


def scan(data: bytes, sizes: list[int] | None = None) -> tuple[ListingScanner, int | None]:
    """Feed `data` in pieces; the offset in `data` of the find (None: no find)."""
    scanner = ListingScanner()
    pos = 0
    for size in [*(sizes or []), len(data)]:
        piece = data[pos : pos + size]
        found = scanner.feed(piece)
        if found is not None:
            return scanner, pos + found
        pos += len(piece)
        if pos >= len(data):
            break
    return scanner, None


LISTING = listing([tool("a"), tool(HIDDEN)]).encode()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_the_scanner_stops_at_the_tools_array_however_it_is_cut(size: int) -> None:
    scanner, at = scan(LISTING, [size] * (len(LISTING) // size + 1))
    assert scanner.found and at == LISTING.index(b'"tools": [') + len(b'"tools": ')
    assert scanner.message_id == 1
    assert HIDDEN.encode() not in LISTING[:at]


@pytest.mark.parametrize(
    ("data", "message_id"),
    [
        (b'{"jsonrpc":"2.0","id":"x\\"y","result":{"tools":[]}}', 'x"y'),
        (b'{"result":{"nextCursor":"c","tools" : [1]},"id":9}', None),  # id after the find
        (
            b'{"jsonrpc":"2.0","id":12345678901234567890,"r\\u0065sult":{"t\\u006fols":[]}}',
            12345678901234567890,
        ),
        (b'  \r\n{"id":1,"result":{"content":[{"tools":[]}],"tools":[{"name":"a"}]}}', 1),
        (b'[{"id":1,"result":{}},{"id":2,"result":{"tools":[{"name":"a"}]}}]', None),
        (b'{"result":{"tools":[]},"result":{}}', None),
    ],
)
def test_the_scanner_finds_result_tools_wherever_a_parser_would(
    data: bytes, message_id: object
) -> None:
    scanner, at = scan(data, [3] * len(data))
    assert scanner.found and at is not None and data[at : at + 1] == b"["
    assert scanner.message_id == message_id


@pytest.mark.parametrize(
    "data",
    [
        b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"image","data":"'
        + b"A" * 200_000
        + b'"}],"isError":false}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"content":{"tools":[1]},"x":"\\"tools\\":["}}',
        b'{"jsonrpc":"2.0","id":1,"params":{"result":{"tools":[1]}}}',
        b'{"jsonrpc":"2.0","id":1,"result":{"tools":{"list":[]},"toolsx":[1]}}',
        b'{"jsonrpc":"2.0","method":"notifications/message","params":{"tools":[1]}}',
        b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m","data":{"tools":[]}}}',
        b'[[{"result":{"tools":[1]}}]]',
    ],
)
def test_the_scanner_lets_everything_else_pass(data: bytes) -> None:
    for sizes in ([len(data)], [5] * (len(data) // 5 + 1), [1] * 200 + [len(data)]):
        scanner, at = scan(data, sizes)
        assert not scanner.found and not scanner.broken and at is None, sizes


@pytest.mark.parametrize("data", [b'{"id":1,}', b"{]", b'{"a" 1}', b'{"a":1} x', b"[1,]", b"}"])
def test_the_scanner_notices_what_is_not_json(data: bytes) -> None:
    scanner, at = scan(data, [1] * len(data))
    assert scanner.broken and at is None


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["tools", "result", "id", "x"]), children, max_size=3)
    ),
    max_leaves=12,
)


def _has_tools(value: Any) -> bool:
    messages = value if isinstance(value, list) else [value]
    for message in messages:
        if isinstance(message, dict):
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("tools"), list):
                return True
    return False


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, sizes=st.lists(st.integers(1, 9), max_size=30), ascii_only=st.booleans())
def test_the_scanner_agrees_with_a_parser(value: Any, sizes: list[int], ascii_only: bool) -> None:
    """Generated messages (no duplicate keys): found exactly when a parser sees a
    `result.tools` array, and never on valid JSON does it call it broken."""
    data = json.dumps(value, ensure_ascii=ascii_only).encode()
    scanner, at = scan(data, sizes)
    assert not scanner.broken
    assert scanner.found == _has_tools(value)
    if at is not None:
        assert data[at : at + 1] == b"["


# -- the other listings: resources, resource templates, prompts ------------------------------


def content_filter(
    resources: tuple[str, ...] = (), templates: tuple[str, ...] = (), prompts: tuple[str, ...] = ()
) -> ListingFilter:
    return ListingFilter(
        {
            "resources": lambda uri: uri is None or uri in resources,
            "resourceTemplates": lambda text: text is None or text in templates,
            "prompts": lambda name: name is None or name in prompts,
        }
    )


def answer(result: dict[str, Any], rid: object = 1) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": rid, "result": result})


@pytest.mark.parametrize(
    ("array", "key", "hidden", "listing_filter"),
    [
        (
            "resources",
            "uri",
            "file:///etc/passwd",
            content_filter(resources=("file:///etc/passwd",)),
        ),
        ("resourceTemplates", "uriTemplate", "db://{t}", content_filter(templates=("db://{t}",))),
        ("prompts", "name", "internal", content_filter(prompts=("internal",))),
    ],
)
def test_each_content_listing_loses_its_hidden_elements_by_its_key(
    array: str, key: str, hidden: str, listing_filter: ListingFilter
) -> None:
    kept = {key: "kept", "name": "Kept", "description": "d"}
    gone = {key: hidden, "name": hidden, "mimeType": "text/plain"}
    text = answer({array: [kept, gone, kept], "nextCursor": "c\\u00e9"})
    new, removed, message = filter_listing(text, listing_filter)
    assert removed == {array: 1} and message == json.loads(text)
    assert json.loads(new)["result"] == {array: [kept, kept], "nextCursor": "c\\u00e9"}
    assert new == text.replace(json.dumps(gone) + ", ", "")
    # a name that is not the array's key hides nothing: a prompt's name is not a resource's uri
    other = {**{k: hidden for k in ("name", "uri", "uriTemplate")}, key: "kept"}
    assert filter_listing(answer({array: [other]}), listing_filter)[1] == {}


def test_elements_without_a_string_key_are_cut_from_a_content_listing() -> None:
    text = answer({"resources": [{"name": "no uri"}, {"uri": 5}, 3, {"uri": "kept"}]})
    new, removed, _ = filter_listing(text, content_filter())
    assert removed == {"resources": 3}
    assert json.loads(new)["result"]["resources"] == [{"uri": "kept"}]


def test_one_filter_cuts_every_array_it_names_and_only_those() -> None:
    text = answer(
        {
            "tools": [tool(HIDDEN)],
            "resources": [{"uri": "r1"}, {"uri": "r2"}],
            "resourceTemplates": [{"uriTemplate": "t1"}],
            "prompts": [{"name": "p1"}],
        }
    )
    new, removed, _ = filter_listing(text, content_filter(resources=("r2",), prompts=("p1",)))
    assert removed == {"resources": 1, "prompts": 1}
    assert json.loads(new)["result"] == {
        "tools": [tool(HIDDEN)],  # no tools filter: the tools pass as sent
        "resources": [{"uri": "r1"}],
        "resourceTemplates": [{"uriTemplate": "t1"}],
        "prompts": [],
    }


@settings(max_examples=200, deadline=None)
@given(
    names=st.lists(st.sampled_from(["a", "b", HIDDEN, "c"]), max_size=6),
    indent=st.sampled_from([None, 0, 2]),
    extra=st.dictionaries(
        st.sampled_from(["resources", "prompts", "nextCursor"]),
        st.lists(st.just({"uri": "x"}), max_size=2),
    ),
)
def test_a_tools_filter_cuts_tools_byte_for_byte_as_before(
    names: list[str], indent: int | None, extra: dict[str, Any]
) -> None:
    """`filter_listing` with a tools filter is `filter_tools`, and both are the cut the
    response phase always made: only hidden tool entries go."""
    text = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "result": {**extra, "tools": [tool(n) for n in names]}},
        indent=indent,
    )
    new, removed, _ = filter_listing(text, ListingFilter.tools(hide(HIDDEN)))
    assert (new, removed.get("tools", 0)) == cut(text, HIDDEN)
    expected = {**extra, "tools": [tool(n) for n in names if n != HIDDEN]}
    assert json.loads(new)["result"] == expected
    if HIDDEN not in names:
        assert new is text


@pytest.mark.parametrize(
    ("data", "arrays", "found"),
    [
        (b'{"id":1,"result":{"resources":[{"uri":"a"}]}}', frozenset({"resources"}), True),
        (b'{"id":1,"result":{"resources":[{"uri":"a"}]}}', frozenset({"tools"}), False),
        (b'{"id":1,"result":{"resourceTemplates":[]}}', frozenset({"resourceTemplates"}), True),
        (
            b'{"id":1,"result":{"r\\u0065s\\u006furc\\u0065T\\u0065mpl\\u0061t\\u0065s":[]}}',
            frozenset({"resourceTemplates"}),
            True,
        ),
        (b'{"id":1,"result":{"prompts":[],"tools":[]}}', frozenset({"prompts", "tools"}), True),
        (
            b'{"id":1,"result":{"contents":[{"uri":"a"}]}}',
            frozenset({"resources", "prompts"}),
            False,
        ),
    ],
)
def test_the_scanner_looks_for_the_arrays_it_is_given(
    data: bytes, arrays: frozenset[str], found: bool
) -> None:
    scanner = ListingScanner(arrays)
    at = None
    for i in range(len(data)):
        at = scanner.feed(data[i : i + 1])
        if at is not None:
            break
    assert scanner.found is found and not scanner.broken
