"""JSON-RPC answers, pure (authz/response/jsonrpc.py): which message answers the request's
id, compared by type and exact value."""

from __future__ import annotations

import pytest

from authz.response.jsonrpc import answer_kind, parse_message, same_id


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}', "result"),
        ('{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}', "error"),
        ('{"jsonrpc":"2.0","id":2,"error":{"code":-32602,"message":"bad"}}', None),
        ('{"jsonrpc":"2.0","id":"1","result":{}}', None),
        ('{"jsonrpc":"2.0","id":true,"result":{}}', None),
        ('{"jsonrpc":"2.0","method":"notifications/progress","params":{}}', None),
    ],
)
def test_answer_kind(text: str, kind: str | None) -> None:
    assert answer_kind(parse_message(text), 1) == kind


def test_ids_compare_by_type_and_exact_value() -> None:
    big = 2**63 + 1
    assert same_id(big, big) and not same_id(big, big - 1)
    assert not same_id(1, "1") and not same_id(True, 1) and not same_id(None, None)
