"""Buckets never collide across callers: the engine's claims, down to the store's keys.

A bucket is (policy, counter, and for an Intercept `state` counter its tool; scope; grant
and session; window). Each part is kept apart in the key, so two different tuples never
name one bucket, however the names are spelled.
"""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from authz.counters import MemoryCounterStore
from authz.counters import base as counters_base
from authz.counters.base import bucket_of
from authz.counters.redis import RedisCounterStore
from authz.engine import decide
from authz.model import Claim, Exhausted, Grant, McpRequest, Reservation, bucket_part
from authz.policy import load_policy

NOW = 1_800_000_000.0


def call(tool: str = "t", session: str | None = None) -> McpRequest:
    return McpRequest(
        method="tools/call", id=1, is_notification=False, tool=tool, session_id=session
    )


def claims(policy: dict[str, Any], grant: Grant, request: McpRequest) -> tuple[Claim, ...]:
    decision = decide(load_policy(policy, name=grant.policy), grant, request)
    assert decision.allowed, decision
    return decision.claims


def session_limit(max_: int = 1) -> dict[str, Any]:
    limit = {"counter": "per_session", "window": "day", "max": max_, "scope": "session"}
    return {"version": "1", "all_tools": {"limits": [limit]}}


def test_a_grant_in_a_session_is_not_a_grant_named_after_both() -> None:
    policy = session_limit()
    (team_in_ci,) = claims(policy, Grant("team", "", "p"), call(session="ci"))
    (team_ci,) = claims(policy, Grant("team/ci", "", "p"), call())
    assert team_in_ci.scope_key == ("team", "ci") and team_ci.scope_key == ("team/ci",)
    assert team_in_ci.bucket != team_ci.bucket


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ((("team", "ci"), "session"), (("team/ci",), "session")),
        ((("a/b", "c"), "session"), (("a", "b/c"), "session")),
        ((("a", "b"), "session"), (("a",), "session")),
        ((('a","b',), "session"), (("a", "b"), "session")),  # a quote cannot close a part
        ((("g",), "grant"), (("g",), "session")),  # a session limit without a session
        (((), "global"), (("*",), "grant")),
    ],
)
def test_sharers_never_join(a: tuple[tuple[str, ...], str], b: tuple[tuple[str, ...], str]) -> None:
    first = Claim("c", a[1], a[0], 60, 1, 1, "/r", policy="p")
    second = Claim("c", b[1], b[0], 60, 1, 1, "/r", policy="p")
    assert first.bucket != second.bucket


def state_rule(counter: str, tool: str) -> dict[str, Any]:
    path = f"state.{tool}.{counter}"
    return {
        "name": f"{tool} {counter}",
        "conditions": [{"path": path, "op": "lt", "value": 5}],
        "state": {"counter": counter, "window": "day"},
    }


def test_intercept_state_counters_keep_tool_and_counter_apart() -> None:
    # state.a.b.c: tool `a.b` with counter `c`, or tool `a` with counter `b.c`
    policy = {
        "version": "1",
        "tools": {
            "a.b": {"rules": [state_rule("c", "a.b")]},
            "a": {"rules": [state_rule("b.c", "a")]},
        },
    }
    grant = Grant("g", "", "p")
    (first,) = claims(policy, grant, call("a.b"))
    (second,) = claims(policy, grant, call("a"))
    assert first.counter == second.counter == "state.a.b.c"  # the same words in messages
    assert (first.state, second.state) == (("a.b", "c"), ("a", "b.c"))
    assert first.bucket != second.bucket


def test_a_limit_named_like_a_state_counter_is_another_bucket() -> None:
    limit = {"counter": "state.t.c", "window": "day", "max": 5}
    policy = {"version": "1", "tools": {"t": {"rules": [state_rule("c", "t")], "limits": [limit]}}}
    limit_claim, rule_claim = claims(policy, Grant("g", "", "p"), call("t"))
    assert limit_claim.counter == rule_claim.counter == "state.t.c"
    assert limit_claim.bucket != rule_claim.bucket


def test_buckets_are_per_policy_and_survive_policy_edits() -> None:
    limit = {"counter": "images", "window": "day", "max": 5}  # global: every caller
    policy = {"version": "1", "all_tools": {"limits": [limit]}}
    (one,) = claims(policy, Grant("a", "", "p"), call())
    (same_policy,) = claims(policy, Grant("b", "", "p"), call())
    (other_policy,) = claims(policy, Grant("c", "", "q"), call())
    edited = {**policy, "description": "edited", "tools": {"t": {}}}
    (after_edit,) = claims(edited, Grant("a", "", "p"), call())
    assert one.bucket == same_policy.bucket  # a global counter is shared by the policy's grants
    assert one.bucket != other_policy.bucket  # another policy's counter of that name is not
    assert one.bucket == after_edit.bucket  # an edit of the policy keeps counting


def test_bucket_parts_are_json_arrays() -> None:
    assert bucket_part("team", "ci") == '["team","ci"]'
    assert bucket_part("team/ci") == '["team/ci"]'
    assert bucket_part() == "[]"
    assert Claim("c", "session", ("g", "s"), 60, 1, 1, "/r", policy="p").bucket == (
        '["p","c"]',
        "session",
        '["g","s"]',
        60,
    )


async def test_the_memory_store_counts_the_two_callers_apart() -> None:
    policy = session_limit(max_=1)
    store = MemoryCounterStore()
    for _ in range(2):  # grant `team` in session `ci` uses its one unit, then is refused
        result = await store.reserve(
            claims(policy, Grant("team", "", "p"), call(session="ci")), NOW
        )
    assert isinstance(result, Exhausted)
    first = await store.reserve(claims(policy, Grant("team/ci", "", "p"), call()), NOW)
    assert isinstance(first, Reservation)  # grant `team/ci` still has its own


def test_redis_keys_of_colliding_names_differ() -> None:
    store = RedisCounterStore(Redis())  # only the key layout: never connects
    policy = session_limit()
    (team_in_ci,) = claims(policy, Grant("team", "", "p"), call(session="ci"))
    (team_ci,) = claims(policy, Grant("team/ci", "", "p"), call())
    assert store.bucket_key(team_in_ci.bucket) == (
        'mcp-authz:{c}:b:86400:session:["p","per_session"]:["team","ci"]'
    )
    assert store.bucket_key(team_ci.bucket) == (
        'mcp-authz:{c}:b:86400:session:["p","per_session"]:["team%2Fci"]'
    )


def test_bucket_of_remembers_equal_claims_and_stays_bounded() -> None:
    policy = session_limit()
    (first,) = claims(policy, Grant("team", "", "p"), call(session="ci"))
    (again,) = claims(policy, Grant("team", "", "p"), call(session="ci"))
    assert first is not again and first == again
    assert bucket_of(first) == first.bucket
    assert bucket_of(again) is bucket_of(first)  # encoded once for both
    (other,) = claims(policy, Grant("team/ci", "", "p"), call())
    assert bucket_of(other) == other.bucket != first.bucket
    for i in range(counters_base._BUCKETS_KEPT + 1):  # sessions come and go
        (session,) = claims(policy, Grant("team", "", "p"), call(session=f"s{i}"))
        assert bucket_of(session) == session.bucket
    assert len(counters_base._buckets) <= counters_base._BUCKETS_KEPT
