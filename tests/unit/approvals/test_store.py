"""The approval store contract, on BOTH stores: memory, and Redis against REAL redis-server
processes (standalone and a 3-master cluster).

The memory store is given the real clock (`time.time()`); the Redis store ignores `now` and
reads the Redis server's `TIME`, which on this machine is the same clock, so one test
asserts the same times on both. A missing `redis-server` fails these tests; it never skips.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from authz.approvals import (
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStore,
    ApprovalStoreUnavailable,
)
from authz.approvals.base import (
    CAP_RULE,
    RETENTION_SECONDS,
    SIZE_RULE,
    ApprovalLimits,
    ApprovalRefused,
    arguments_digest,
    arguments_hmac,
    canonical_json,
    format_cursor,
    parse_cursor,
)
from authz.approvals.memory import MemoryApprovalStore
from authz.approvals.redis import RedisApprovalStore
from authz.model import Approval, ApprovalStatus
from tests.redis_server import RedisClusterProcesses, RedisServer, free_port

Store = MemoryApprovalStore | RedisApprovalStore
ID = re.compile(r"apr_[0-9a-f]{24}")
UNKNOWN_ID = "apr_" + "0" * 24
MALFORMED_IDS = ["", "apr_", "apr_xyz", "APR_" + "0" * 24, "apr_" + "0" * 23, "*", "{a}", "a:b"]
EXPIRY_WAIT = 1.3  # past a 1 s ttl (times are microseconds; 0.3 s of slack for a busy host)
KEY = b"test-digest-key-0123456789abcdef"


def req(**changes: Any) -> ApprovalRequest:
    base = ApprovalRequest(
        grant_id="g-1",
        grant_label="Alice's laptop",
        policy="imagegen",
        policy_hash="ph-1",
        tool="generate_image",
        arguments={"prompt": "a cat", "n": 1},
        rule="/tools/generate_image/approve_if/0",
        ttl_seconds=60,
        decision_id="dec-1",
    )
    return replace(base, **changes)


# -- fixtures ---------------------------------------------------------------------------


REDIS_KINDS = [
    pytest.param(kind, marks=pytest.mark.processes) for kind in ("redis", "redis-cluster")
]
"""The Redis-backed variants of a store fixture: they run redis-server."""


@pytest.fixture
def prefix() -> str:
    return f"test-{secrets.token_hex(4)}"


def _redis_store(
    request: pytest.FixtureRequest, kind: str, prefix: str, **options: Any
) -> RedisApprovalStore:
    options.setdefault("digest_key", KEY)
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return RedisApprovalStore.from_url(server.url, prefix=prefix, timeout=2.0, **options)
    cluster: RedisClusterProcesses = request.getfixturevalue("redis_cluster")
    return RedisApprovalStore.from_url(
        cluster.url, cluster=True, prefix=prefix, timeout=2.0, **options
    )


async def _replicas(
    request: pytest.FixtureRequest, kind: str, prefix: str, **options: Any
) -> list[Store]:
    """Two stores over the same approvals: two Redis clients (two sidecar replicas), or the
    one memory store twice (memory is shared by one process only)."""
    if kind == "memory":
        memory = MemoryApprovalStore(digest_key=KEY, **options)
        return [memory, memory]
    return [_redis_store(request, kind, prefix, **options) for _ in "ab"]


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def replicas(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[list[Store]]:
    made = await _replicas(request, request.param, prefix)
    yield made
    for store in made:
        await store.close()


LIMITS = ApprovalLimits(max_pending_per_grant=3, max_argument_bytes=200, max_records=5)


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def bounded(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[list[Store]]:
    """`replicas` with small bounds: 3 pending per grant, 200 bytes of arguments, 5 records."""
    made = await _replicas(request, request.param, prefix, limits=LIMITS)
    yield made
    for store in made:
        await store.close()


@pytest.fixture
def store(replicas: list[Store]) -> Store:
    return replicas[0]


@pytest.fixture
async def redis_store(redis_server: RedisServer, prefix: str) -> AsyncIterator[RedisApprovalStore]:
    store = RedisApprovalStore.from_url(
        redis_server.url, prefix=prefix, timeout=2.0, digest_key=KEY
    )
    yield store
    await store.close()


# -- the contract, on every store --------------------------------------------------------


async def test_is_an_approval_store(store: Store) -> None:
    assert isinstance(store, ApprovalStore)


async def test_a_new_call_creates_a_pending_approval(store: Store) -> None:
    asked = req(arguments={"prompt": "un chat é 猫", "n": 1, "opts": {"z": [1.5, None]}})
    before = time.time()
    approval, created = await store.request(asked, time.time())
    after = time.time()
    assert created is True
    assert ID.fullmatch(approval.id)
    assert approval.status is ApprovalStatus.PENDING
    assert approval.binding == asked.binding
    assert (approval.grant_id, approval.grant_label) == ("g-1", "Alice's laptop")
    assert (approval.policy, approval.policy_hash) == ("imagegen", "ph-1")
    assert (approval.tool, approval.rule) == ("generate_image", asked.rule)
    assert approval.decision_id == "dec-1"
    assert approval.arguments_hmac == arguments_hmac(KEY, canonical_json(dict(asked.arguments)))
    assert approval.arguments_hmac != arguments_digest(asked.arguments)  # keyed, not a hash
    assert approval.argument_keys == ("n", "opts", "prompt")
    assert approval.arguments_json == canonical_json(dict(asked.arguments))
    assert approval.arguments == {"prompt": "un chat é 猫", "n": 1, "opts": {"z": [1.5, None]}}
    assert before - 0.05 <= approval.requested_at <= after + 0.05
    assert approval.expires_at == pytest.approx(approval.requested_at + 60, abs=1e-5)
    assert approval.decided_at is None and approval.decided_by is None
    assert approval.reason is None and approval.used_at is None
    assert await store.get(approval.id, time.time()) == approval


async def test_an_identical_call_gets_the_same_pending_approval(replicas: list[Store]) -> None:
    first, created = await replicas[0].request(req(), time.time())
    assert created is True
    again, created_again = await replicas[1].request(req(), time.time())
    assert created_again is False
    assert again == first
    # not part of the binding: who is shown, which rule held it, which decision
    relabelled = req(grant_label="other", rule="/all_tools/approve_if/0", decision_id="dec-2")
    same, created_same = await replicas[0].request(relabelled, time.time())
    assert (same.id, created_same) == (first.id, False)
    reordered = req(arguments={"n": 1, "prompt": "a cat"})
    same, created_same = await replicas[1].request(reordered, time.time())
    assert (same.id, created_same) == (first.id, False)


@pytest.mark.parametrize(
    "changes",
    [
        {"arguments": {"prompt": "a dog", "n": 1}},
        {"arguments": {"prompt": "a cat", "n": 1.0}},
        {"arguments": {"prompt": "a cat", "n": 1, "extra": None}},
        {"arguments": {}},
        {"grant_id": "g-2"},
        {"tool": "edit_image"},
        {"policy_hash": "ph-2"},
    ],
    ids=["arguments", "int-vs-float", "extra-key", "no-arguments", "grant", "tool", "policy"],
)
async def test_a_different_call_gets_a_different_approval(
    store: Store, changes: dict[str, Any]
) -> None:
    first, _ = await store.request(req(), time.time())
    other_request = req(**changes)
    assert other_request.binding != first.binding
    other, created = await store.request(other_request, time.time())
    assert created is True and other.id != first.id
    assert other.binding == other_request.binding
    assert (await store.get(first.id, time.time())).status is ApprovalStatus.PENDING


async def test_approve_then_consume_once_then_held_again(replicas: list[Store]) -> None:
    a, b = replicas
    pending, _ = await a.request(req(), time.time())
    approved = await b.resolve(
        pending.id, approve=True, approver="admin-1", reason="looks fine", now=time.time()
    )
    assert approved.status is ApprovalStatus.APPROVED
    assert (approved.decided_by, approved.reason) == ("admin-1", "looks fine")
    assert approved.decided_at is not None
    assert pending.requested_at <= approved.decided_at <= time.time() + 0.05
    assert (approved.id, approved.binding, approved.expires_at) == (
        pending.id,
        pending.binding,
        pending.expires_at,
    )
    retried, created = await a.request(req(), time.time())  # the retry finds the approval
    assert created is False and retried == approved
    assert await b.consume(pending.id, pending.binding, time.time()) is True
    assert await a.consume(pending.id, pending.binding, time.time()) is False
    used = await a.get(pending.id, time.time())
    assert used.status is ApprovalStatus.USED
    assert used.used_at is not None and used.decided_at is not None
    assert used.decided_at <= used.used_at <= time.time() + 0.05
    assert (used.decided_by, used.reason) == ("admin-1", "looks fine")
    held_again, created = await b.request(req(), time.time())
    assert created is True and held_again.id != pending.id
    assert held_again.status is ApprovalStatus.PENDING
    assert await a.consume(held_again.id, held_again.binding, time.time()) is False  # pending
    assert (await a.get(pending.id, time.time())).status is ApprovalStatus.USED


async def test_a_denial_stays_bound_to_the_call(replicas: list[Store]) -> None:
    a, b = replicas
    pending, _ = await a.request(req(), time.time())
    denied = await b.resolve(
        pending.id, approve=False, approver="admin-2", reason="no cats", now=time.time()
    )
    assert denied.status is ApprovalStatus.DENIED
    assert (denied.decided_by, denied.reason) == ("admin-2", "no cats")
    for store in (a, b, a):
        retried, created = await store.request(req(), time.time())
        assert created is False and retried == denied
    assert await a.consume(pending.id, pending.binding, time.time()) is False
    assert (await b.get(pending.id, time.time())).status is ApprovalStatus.DENIED


async def test_a_decision_without_a_reason(store: Store) -> None:
    pending, _ = await store.request(req(), time.time())
    approved = await store.resolve(
        pending.id, approve=True, approver="admin-1", reason=None, now=time.time()
    )
    assert approved.reason is None
    assert (await store.get(pending.id, time.time())).reason is None
    other, _ = await store.request(req(grant_id="g-2"), time.time())
    denied = await store.resolve(other.id, approve=False, approver="a", reason="", now=time.time())
    assert denied.reason == ""


async def test_only_a_pending_approval_can_be_decided(replicas: list[Store]) -> None:
    a, b = replicas
    approved, _ = await a.request(req(), time.time())
    await a.resolve(approved.id, approve=True, approver="x", reason=None, now=time.time())
    denied, _ = await a.request(req(grant_id="g-2"), time.time())
    await a.resolve(denied.id, approve=False, approver="y", reason="no", now=time.time())
    for approval_id, status in ((approved.id, "approved"), (denied.id, "denied")):
        for approve in (True, False):
            with pytest.raises(ApprovalConflict) as raised:
                await b.resolve(
                    approval_id, approve=approve, approver="z", reason="late", now=time.time()
                )
            assert raised.value.approval.id == approval_id
            assert raised.value.approval.status.value == status
            assert raised.value.approval.decided_by in ("x", "y")  # unchanged
            assert status in raised.value.message
    assert await b.consume(approved.id, approved.binding, time.time()) is True
    with pytest.raises(ApprovalConflict) as raised:
        await a.resolve(approved.id, approve=False, approver="z", reason=None, now=time.time())
    assert raised.value.approval.status is ApprovalStatus.USED
    assert (await a.get(denied.id, time.time())).reason == "no"


async def test_two_approvers_racing_one_wins(replicas: list[Store]) -> None:
    a, b = replicas
    pending, _ = await a.request(req(), time.time())

    async def resolve(store: Store, approve: bool) -> Approval | ApprovalConflict:
        try:
            return await store.resolve(
                pending.id, approve=approve, approver=str(approve), reason=None, now=time.time()
            )
        except ApprovalConflict as conflict:
            return conflict

    results = await asyncio.gather(*(resolve(s, i % 2 == 0) for i in range(10) for s in (a, b)))
    winners = [r for r in results if isinstance(r, Approval)]
    assert len(winners) == 1
    final = await a.get(pending.id, time.time())
    assert final == winners[0]
    assert final.decided_by == str(final.status is ApprovalStatus.APPROVED)


async def test_unknown_and_malformed_ids_are_not_found(store: Store) -> None:
    await store.request(req(), time.time())
    for approval_id in [UNKNOWN_ID, *MALFORMED_IDS]:
        with pytest.raises(ApprovalNotFound):
            await store.get(approval_id, time.time())
        with pytest.raises(ApprovalNotFound):
            await store.resolve(approval_id, approve=True, approver="a", reason=None, now=0)
        assert await store.consume(approval_id, req().binding, time.time()) is False


async def test_consume_needs_the_same_binding(replicas: list[Store]) -> None:
    a, b = replicas
    approval, _ = await a.request(req(), time.time())
    await a.resolve(approval.id, approve=True, approver="a", reason=None, now=time.time())
    other = req(arguments={"prompt": "a dog", "n": 1}).binding
    for binding in (other, "", "not-hex", approval.binding.upper(), approval.binding[:-1]):
        assert await b.consume(approval.id, binding, time.time()) is False
    assert (await a.get(approval.id, time.time())).status is ApprovalStatus.APPROVED
    assert await b.consume(approval.id, approval.binding, time.time()) is True


async def test_expiry(replicas: list[Store]) -> None:
    a, b = replicas
    short = {"ttl_seconds": 1}
    pending, _ = await a.request(req(grant_id="g-pending", **short), time.time())
    approved, _ = await a.request(req(grant_id="g-approved", **short), time.time())
    denied, _ = await a.request(req(grant_id="g-denied", **short), time.time())
    used, _ = await a.request(req(grant_id="g-used", **short), time.time())
    lasting, _ = await a.request(req(grant_id="g-lasting"), time.time())
    for approval in (approved, used):
        await b.resolve(approval.id, approve=True, approver="a", reason=None, now=time.time())
    await b.resolve(denied.id, approve=False, approver="a", reason="no", now=time.time())
    assert await a.consume(used.id, used.binding, time.time()) is True
    assert {x.status for x in await b.list_approvals(time.time())} == {
        ApprovalStatus.PENDING,
        ApprovalStatus.APPROVED,
        ApprovalStatus.DENIED,
        ApprovalStatus.USED,
    }
    await asyncio.sleep(EXPIRY_WAIT)
    now = time.time()
    expected = {
        pending.id: ApprovalStatus.EXPIRED,
        approved.id: ApprovalStatus.EXPIRED,
        denied.id: ApprovalStatus.DENIED,  # a decision is kept as it was
        used.id: ApprovalStatus.USED,
        lasting.id: ApprovalStatus.PENDING,
    }
    for approval_id, status in expected.items():
        seen = await b.get(approval_id, now)
        assert seen.status is status
        # values are kept while the approval is live, never after it is used or expired
        kept = status is ApprovalStatus.PENDING
        assert (seen.arguments is not None) is kept, (status, seen.arguments)
        assert seen.argument_keys == ("n", "prompt") and seen.arguments_hmac
    expired = await a.list_approvals(time.time(), statuses=[ApprovalStatus.EXPIRED])
    assert [x.id for x in expired] == [pending.id, approved.id]
    # an expired approval is unusable: it cannot be decided or consumed
    with pytest.raises(ApprovalConflict) as raised:
        await b.resolve(pending.id, approve=True, approver="a", reason=None, now=time.time())
    assert raised.value.approval.status is ApprovalStatus.EXPIRED
    assert await a.consume(approved.id, approved.binding, time.time()) is False
    assert (await a.get(approved.id, time.time())).status is ApprovalStatus.EXPIRED
    # and not bound any more: every identical call is held again as a new pending approval
    for old in (pending, approved, denied):
        again, created = await b.request(req(grant_id=old.grant_id, ttl_seconds=1), time.time())
        assert created is True and again.id != old.id
        assert again.status is ApprovalStatus.PENDING
    again, created = await b.request(req(grant_id="g-lasting"), time.time())
    assert (again.id, created) == (lasting.id, False)


async def test_list_approvals(replicas: list[Store]) -> None:
    a, b = replicas
    assert await a.list_approvals(time.time()) == []
    made = []
    for grant in ("g-1", "g-2", "g-3", "g-4"):
        approval, _ = await (a if grant in ("g-1", "g-3") else b).request(
            req(grant_id=grant), time.time()
        )
        made.append(approval)
        await asyncio.sleep(0.002)  # distinct request times
    await a.resolve(made[1].id, approve=True, approver="a", reason=None, now=time.time())
    await b.resolve(made[2].id, approve=False, approver="a", reason=None, now=time.time())
    await a.resolve(made[3].id, approve=True, approver="a", reason=None, now=time.time())
    assert await b.consume(made[3].id, made[3].binding, time.time()) is True

    def ids(approvals: list[Approval]) -> list[str]:
        return [x.id for x in approvals]

    everything = await b.list_approvals(time.time())
    assert ids(everything) == [x.id for x in made]  # oldest first
    assert [x.status for x in everything] == [
        ApprovalStatus.PENDING,
        ApprovalStatus.APPROVED,
        ApprovalStatus.DENIED,
        ApprovalStatus.USED,
    ]
    for x in everything:
        assert x == await a.get(x.id, time.time())
    pending = await a.list_approvals(time.time(), statuses=[ApprovalStatus.PENDING])
    assert ids(pending) == [made[0].id]
    decided = await a.list_approvals(
        time.time(), statuses=(ApprovalStatus.DENIED, ApprovalStatus.APPROVED)
    )
    assert ids(decided) == [made[1].id, made[2].id]
    assert ids(await b.list_approvals(time.time(), statuses=[ApprovalStatus.USED])) == [made[3].id]
    assert await b.list_approvals(time.time(), statuses=[ApprovalStatus.EXPIRED]) == []


async def test_concurrent_requests_from_two_replicas_make_one_approval(
    replicas: list[Store],
) -> None:
    results = await asyncio.gather(
        *(replica.request(req(), time.time()) for _ in range(25) for replica in replicas)
    )
    assert len({approval.id for approval, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(await replicas[0].list_approvals(time.time())) == 1


async def test_concurrent_consumes_succeed_exactly_once(replicas: list[Store]) -> None:
    approval, _ = await replicas[0].request(req(), time.time())
    await replicas[1].resolve(approval.id, approve=True, approver="a", reason=None, now=0)
    results = await asyncio.gather(
        *(
            replica.consume(approval.id, approval.binding, time.time())
            for _ in range(25)
            for replica in replicas
        )
    )
    assert sum(results) == 1
    held_again = await asyncio.gather(
        *(replica.request(req(), time.time()) for _ in range(10) for replica in replicas)
    )
    assert len({x.id for x, _ in held_again}) == 1 and sum(c for _, c in held_again) == 1
    assert held_again[0][0].id != approval.id


# -- bounds: the per-grant cap, the argument size, the records kept -----------------------


def small(n: int, **changes: Any) -> ApprovalRequest:
    return req(arguments={"n": n}, **changes)


async def test_a_grant_has_at_most_its_cap_of_pending_approvals(bounded: list[Store]) -> None:
    a, b = bounded
    made = [(await (a if n % 2 else b).request(small(n), time.time()))[0] for n in range(3)]
    with pytest.raises(ApprovalRefused) as refused:
        await a.request(small(3), time.time())
    assert refused.value.rule == CAP_RULE
    assert "3 pending approvals" in refused.value.message
    # a retry still finds its approval; another grant has its own places
    again, created = await b.request(small(0), time.time())
    assert (again.id, created) == (made[0].id, False)
    other, created = await b.request(small(3, grant_id="g-2"), time.time())
    assert created is True
    # a decision frees a place; so does an approval or a denial
    await a.resolve(made[0].id, approve=True, approver="x", reason=None, now=time.time())
    fourth, created = await b.request(small(3), time.time())
    assert created is True
    with pytest.raises(ApprovalRefused):
        await b.request(small(4), time.time())
    await b.resolve(made[1].id, approve=False, approver="x", reason="no", now=time.time())
    fifth, created = await a.request(small(4), time.time())
    assert created is True
    pending = await a.list_approvals(time.time(), statuses=[ApprovalStatus.PENDING])
    assert {x.id for x in pending} == {made[2].id, fourth.id, fifth.id, other.id}


async def test_an_expired_approval_frees_its_place(bounded: list[Store]) -> None:
    a, b = bounded
    for n in range(3):
        await a.request(small(n, ttl_seconds=1), time.time())
    with pytest.raises(ApprovalRefused):
        await b.request(small(3), time.time())
    await asyncio.sleep(EXPIRY_WAIT)
    for n in range(3, 6):
        assert (await b.request(small(n), time.time()))[1] is True


async def test_the_cap_holds_under_concurrent_requests(bounded: list[Store]) -> None:
    async def ask(store: Store, n: int) -> bool:
        try:
            await store.request(small(n), time.time())
        except ApprovalRefused:
            return False
        return True

    results = await asyncio.gather(*(ask(bounded[n % 2], n) for n in range(30)))
    assert sum(results) == 3
    pending = await bounded[0].list_approvals(time.time(), statuses=[ApprovalStatus.PENDING])
    assert len(pending) == 3


async def test_arguments_over_the_size_bound_are_refused_and_not_stored(
    bounded: list[Store],
) -> None:
    a, _ = bounded
    fits = req(arguments={"prompt": "x" * 180})  # 193 bytes of canonical JSON
    assert fits.arguments_size <= LIMITS.max_argument_bytes
    assert (await a.request(fits, time.time()))[1] is True
    secret = "sk-" + "9" * 200
    with pytest.raises(ApprovalRefused) as refused:
        await a.request(req(arguments={"token": secret}), time.time())
    assert refused.value.rule == SIZE_RULE
    message = refused.value.message
    assert "arguments" in message and "200 bytes" in message and "215 bytes" in message
    assert secret not in message and "token" not in message
    # multi-byte characters count as their UTF-8 bytes
    with pytest.raises(ApprovalRefused):
        await a.request(req(arguments={"p": "é" * 100}), time.time())
    assert [x.arguments for x in await a.list_approvals(time.time())] == [fits.arguments]


async def test_values_go_with_use_the_record_stays(bounded: list[Store]) -> None:
    a, b = bounded
    approval, _ = await a.request(small(1), time.time())
    assert (await b.get(approval.id, time.time())).arguments == {"n": 1}
    await b.resolve(approval.id, approve=True, approver="x", reason=None, now=time.time())
    assert (await a.get(approval.id, time.time())).arguments == {"n": 1}  # approved: shown
    assert await a.consume(approval.id, approval.binding, time.time()) is True
    used = await b.get(approval.id, time.time())
    assert used.status is ApprovalStatus.USED and used.arguments is None
    assert used.argument_keys == ("n",) and used.arguments_hmac == approval.arguments_hmac


async def test_records_beyond_the_bound_are_dropped_oldest_first(bounded: list[Store]) -> None:
    a, b = bounded
    finished = []
    for n in range(8):  # each used at once: finished records, never live
        approval, _ = await a.request(small(n, ttl_seconds=60 + n), time.time())
        await b.resolve(approval.id, approve=True, approver="x", reason=None, now=time.time())
        assert await a.consume(approval.id, approval.binding, time.time())
        finished.append(approval)
    live, _ = await b.request(small(100), time.time())
    kept = await a.list_approvals(time.time())
    assert live.id in {x.id for x in kept}
    assert len(kept) <= LIMITS.max_records + 1  # the live one on top
    kept_ids = [x.id for x in kept if x.id != live.id]
    assert kept_ids == [x.id for x in finished[-len(kept_ids) :]]  # the oldest went first
    with pytest.raises(ApprovalNotFound):
        await b.get(finished[0].id, time.time())


async def test_listing_in_pages(bounded: list[Store]) -> None:
    a, b = bounded
    made = []
    for n in range(3):
        for grant in ("g-1", "g-2"):
            made.append((await a.request(small(n, grant_id=grant), time.time()))[0])
            await asyncio.sleep(0.002)
    await b.resolve(made[2].id, approve=False, approver="x", reason="no", now=time.time())
    pages, after = [], None
    while True:
        page = await b.list_approvals(time.time(), after=after, limit=4)
        pages.append([x.id for x in page])
        if len(page) < 4:
            break
        after = page[-1].cursor
    assert pages == [[x.id for x in made[:4]], [x.id for x in made[4:]]]
    pending = await a.list_approvals(
        time.time(), statuses=[ApprovalStatus.PENDING], after=made[0].cursor, limit=2
    )
    assert [x.id for x in pending] == [made[1].id, made[3].id]
    assert await a.list_approvals(time.time(), after=made[-1].cursor) == []
    assert await a.list_approvals(time.time(), limit=1) == [made[0]]


def test_cursor_text_round_trips() -> None:
    cursor = (1796198217.31966, "apr_" + "ab" * 12)
    text = format_cursor(cursor)
    assert text == "1796198217.319660_apr_abababababababababababab"
    assert parse_cursor(text) == cursor
    for bad in ("", "1.5_apr_x", "x_apr_" + "0" * 24, text + "0", "1e9_apr_" + "0" * 24):
        assert parse_cursor(bad) is None


@pytest.mark.parametrize(
    "changes",
    [{"max_pending_per_grant": 0}, {"max_argument_bytes": -1}, {"max_records": True}],
)
def test_limits_must_be_positive(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        ApprovalLimits(**changes)


async def test_the_digest_is_keyed() -> None:
    one, two = MemoryApprovalStore(digest_key=KEY), MemoryApprovalStore(digest_key=b"k" * 32)
    first, _ = await one.request(req(), time.time())
    again, _ = await one.request(req(grant_id="g-2"), time.time())
    other, _ = await two.request(req(), time.time())
    assert first.arguments_hmac == again.arguments_hmac  # same arguments, same key
    assert first.arguments_hmac != other.arguments_hmac  # another key
    unkeyed = hashlib.sha256(canonical_json(dict(req().arguments)).encode()).hexdigest()
    assert unkeyed not in (first.arguments_hmac, other.arguments_hmac)
    random_keys = {
        (await MemoryApprovalStore().request(req(), time.time()))[0].arguments_hmac
        for _ in range(3)
    }
    assert len(random_keys) == 3  # without a configured key: one of its own per store


# -- canonical JSON and the argument digest ----------------------------------------------


def test_canonical_json() -> None:
    assert canonical_json({"b": 1, "a": [True, None, 1.0, "é"]}) == (
        '{"a":[true,null,1.0,"é"],"b":1}'
    )
    assert canonical_json({"k": "猫 \u2028"}) == '{"k":"猫 \u2028"}'
    assert canonical_json({"q": 'a"\\\n'}) == '{"q":"a\\"\\\\\\n"}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})
    with pytest.raises(ValueError):
        canonical_json({"x": float("inf")})


def test_argument_digest_distinguishes_numbers_and_nesting() -> None:
    assert arguments_digest({"n": 1}) != arguments_digest({"n": 1.0})
    assert arguments_digest({"n": 1}) != arguments_digest({"n": "1"})
    assert arguments_digest({"n": True}) != arguments_digest({"n": 1})
    assert arguments_digest({"a": {"b": 1}}) != arguments_digest({"a.b": 1})
    assert arguments_digest({"a": [1, 2]}) != arguments_digest({"a": [2, 1]})
    assert arguments_digest({}) != arguments_digest({"": None})
    assert re.fullmatch(r"[0-9a-f]{64}", arguments_digest({}))


def test_binding_separates_its_parts() -> None:
    assert req(grant_id="a", tool="b/c").binding != req(grant_id="a/b", tool="c").binding
    assert req(grant_id="a", tool="bc").binding != req(grant_id="ab", tool="c").binding
    assert re.fullmatch(r"[0-9a-f]{64}", req().binding)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), JSON, max_size=6), st.randoms())
def test_key_order_is_irrelevant(arguments: dict[str, Any], rng: Any) -> None:
    def shuffled(value: Any) -> Any:
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    other = shuffled(arguments)
    assert canonical_json(other) == canonical_json(arguments)
    assert arguments_digest(other) == arguments_digest(arguments)
    assert req(arguments=other).binding == req(arguments=arguments).binding
    assert json.loads(canonical_json(arguments)) == arguments  # round-trips


@given(st.text(min_size=1).filter(lambda t: any(ord(c) > 127 for c in t)))
def test_unicode_is_not_escaped(text: str) -> None:
    encoded = canonical_json({"k": text})
    for c in text:
        if ord(c) > 127:
            assert c in encoded  # as itself, not as a \\u escape
    assert len(encoded.encode()) < len(json.dumps({"k": text}).encode())
    assert json.loads(encoded) == {"k": text}
    assert arguments_digest({"k": text}) == hashlib.sha256(encoded.encode()).hexdigest()


# -- Redis: keys, clock, construction ------------------------------------------------------


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def test_redis_keys_and_their_expiry(redis_store: RedisApprovalStore) -> None:
    client = redis_store.client
    asked = req(arguments={"prompt": "un chat é", "n": 2}, ttl_seconds=30)
    approval, _ = await redis_store.request(asked, time.time())
    record, binding = redis_store.record_key(approval.id), redis_store.binding_key(asked.binding)
    prefix = redis_store.prefix
    assert record == f"{prefix}:{{a}}:a:{approval.id}"
    assert binding == f"{prefix}:{{a}}:b:{asked.binding}"
    values, pending = redis_store.values_key(approval.id), redis_store.pending_key("g-1")
    assert values == f"{prefix}:{{a}}:v:{approval.id}"
    assert pending == f"{prefix}:{{a}}:p:{hashlib.sha256(b'g-1').hexdigest()}"
    stored = {text(k): text(v) for k, v in (await client.hgetall(record)).items()}
    assert "arguments_json" not in stored and "un chat" not in json.dumps(stored)
    assert stored["argument_keys"] == '["n", "prompt"]'
    assert stored["arguments_hmac"] == approval.arguments_hmac
    assert text(await client.get(values)) == '{"n":2,"prompt":"un chat é"}'  # for approvers
    assert stored["status"] == "pending" and stored["id"] == approval.id
    assert "decided_by" not in stored and "reason" not in stored
    assert await client.get(binding) == approval.id.encode()
    assert await client.zscore(pending, approval.id) == pytest.approx(approval.expires_at)
    seconds, micros = await client.time()
    now_ms = seconds * 1000 + micros / 1000
    for key in (binding, values, pending):
        assert abs(await client.pttl(key) - (approval.expires_at * 1000 - now_ms)) < 250
    expected = (approval.expires_at + RETENTION_SECONDS) * 1000 - now_ms
    assert abs(await client.pttl(record) - expected) < 250
    assert await client.zscore(redis_store.index_key, approval.id) == pytest.approx(
        approval.requested_at, abs=1e-5
    )
    await redis_store.resolve(approval.id, approve=True, approver="a", reason=None, now=0)
    assert await client.get(binding) == approval.id.encode()  # still bound while approved
    assert await client.exists(pending) == 0  # decided: no longer counts against the cap
    assert await client.exists(values) == 1  # still shown while approved
    assert await redis_store.consume(approval.id, asked.binding, time.time()) is True
    assert await client.exists(binding) == 0  # the next identical call is held again
    assert await client.exists(values) == 0  # used: the values are gone
    assert abs(await client.pttl(record) - expected) < 500  # kept for `show` and audits
    keys = {k async for k in client.scan_iter(f"{prefix}:*")}
    assert {k.decode() for k in keys} == {record, redis_store.index_key, redis_store.drops_key}
    assert len({key_slot(k) for k in keys} | {key_slot(b"{a}")}) == 1


async def test_redis_the_record_not_a_stale_binding_key_decides(
    redis_store: RedisApprovalStore,
) -> None:
    """A binding key that outlived its approval (used, or expired) binds nothing."""
    client = redis_store.client
    used, _ = await redis_store.request(req(), time.time())
    await redis_store.resolve(used.id, approve=True, approver="a", reason=None, now=0)
    assert await redis_store.consume(used.id, used.binding, time.time()) is True
    await client.set(redis_store.binding_key(used.binding), used.id)
    fresh, created = await redis_store.request(req(), time.time())
    assert created is True and fresh.id != used.id
    expired, _ = await redis_store.request(req(grant_id="g-2", ttl_seconds=1), time.time())
    await asyncio.sleep(EXPIRY_WAIT)
    await client.set(redis_store.binding_key(expired.binding), expired.id)
    again, created = await redis_store.request(req(grant_id="g-2"), time.time())
    assert created is True and again.id != expired.id


async def test_redis_follows_the_server_clock_not_now(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    ahead, behind = (RedisApprovalStore.from_url(redis_server.url, prefix=prefix) for _ in "ab")
    seconds, _ = await ahead.client.time()
    first, _ = await ahead.request(req(ttl_seconds=1), time.time() + 3600)
    same, created = await behind.request(req(ttl_seconds=1), 0.0)
    assert (same.id, created) == (first.id, False)
    assert seconds <= first.requested_at < seconds + 2
    assert (await behind.get(first.id, time.time() + 3600)).status is ApprovalStatus.PENDING
    await behind.resolve(first.id, approve=True, approver="a", reason=None, now=1e12)
    approved = await ahead.get(first.id, 0.0)
    assert approved.status is ApprovalStatus.APPROVED
    assert approved.decided_at is not None and seconds <= approved.decided_at < seconds + 2
    await asyncio.sleep(EXPIRY_WAIT)
    assert (await ahead.get(first.id, 0.0)).status is ApprovalStatus.EXPIRED
    assert await behind.consume(first.id, first.binding, 0.0) is False
    await ahead.close()
    await behind.close()


async def test_redis_drops_records_after_retention(redis_server: RedisServer) -> None:
    prefix = f"test-{secrets.token_hex(4)}"
    store = RedisApprovalStore.from_url(redis_server.url, prefix=prefix, retention_seconds=0)
    gone, _ = await store.request(req(ttl_seconds=1), time.time())
    await asyncio.sleep(EXPIRY_WAIT)
    with pytest.raises(ApprovalNotFound):
        await store.get(gone.id, time.time())
    assert await store.client.zcard(store.index_key) == 1  # until the next list or request
    assert await store.list_approvals(time.time()) == []
    assert await store.client.zcard(store.index_key) == 0
    assert await store.client.zcard(store.drops_key) == 0
    old, _ = await store.request(req(ttl_seconds=1), time.time())
    await asyncio.sleep(EXPIRY_WAIT)
    new, _ = await store.request(req(grant_id="g-2"), time.time())
    assert await store.client.zrange(store.index_key, 0, -1) == [new.id.encode()]
    assert old.id != new.id
    await store.close()


async def test_describe_and_ping(redis_server: RedisServer, prefix: str) -> None:
    store = RedisApprovalStore.from_url(redis_server.url, prefix=prefix)
    assert store.describe() == f"redis {redis_server.url} prefix={prefix}"
    assert await store.ping() is True
    await store.close()
    secret = RedisApprovalStore.from_url("redis://user:s3cret@127.0.0.1:6399/2")
    assert secret.describe() == "redis redis://127.0.0.1:6399/2 prefix=mcp-authz"
    await secret.close()


@pytest.mark.parametrize("bad", ["", "a{b", "a}b", "a b", "a\nb"])
def test_prefix_must_not_break_the_key_layout(bad: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        RedisApprovalStore.from_url("redis://127.0.0.1:1", prefix=bad)


async def test_malformed_ids_never_reach_redis() -> None:
    store = RedisApprovalStore.from_url(f"redis://127.0.0.1:{free_port()}", timeout=0.25)
    for approval_id in MALFORMED_IDS:
        with pytest.raises(ApprovalNotFound):
            await store.get(approval_id, 0)
        with pytest.raises(ApprovalNotFound):
            await store.resolve(approval_id, approve=True, approver="a", reason=None, now=0)
        assert await store.consume(approval_id, req().binding, 0) is False
    with pytest.raises(ApprovalStoreUnavailable):  # a well-formed id does ask (nobody there)
        await store.get(UNKNOWN_ID, 0)
    await store.close()


# -- Redis: faults -----------------------------------------------------------------------


async def test_redis_down_is_unavailable_and_the_same_store_recovers(
    own_server: RedisServer,
) -> None:
    store = RedisApprovalStore.from_url(own_server.url, timeout=0.25)
    approval, _ = await store.request(req(), time.time())
    own_server.kill()
    operations = [
        store.request(req(), time.time()),
        store.consume(approval.id, approval.binding, time.time()),
        store.resolve(approval.id, approve=True, approver="a", reason=None, now=time.time()),
        store.get(approval.id, time.time()),
        store.list_approvals(time.time()),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(ApprovalStoreUnavailable) as raised:
            await operation
        assert time.monotonic() - started < 2.0
        assert raised.value.__cause__ is not None
    assert await store.ping() is False
    own_server.start()  # same port, empty (nothing persisted), scripts unloaded
    assert await store.ping() is True
    with pytest.raises(ApprovalNotFound):
        await store.get(approval.id, time.time())
    again, created = await store.request(req(), time.time())
    assert created is True and again.id != approval.id
    await store.close()


async def test_a_hung_redis_times_out_within_the_deadline(own_server: RedisServer) -> None:
    store = RedisApprovalStore.from_url(own_server.url, timeout=0.25)
    approval, _ = await store.request(req(), time.time())
    own_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(ApprovalStoreUnavailable):
            await store.request(req(), time.time())
        assert time.monotonic() - started < 1.0
        assert await store.ping() is False
    finally:
        own_server.resume()
    again, created = await store.request(req(), time.time())
    assert (again.id, created) == (approval.id, False)
    await store.close()
