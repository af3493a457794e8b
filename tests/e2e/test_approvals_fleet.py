"""Two sidecar replicas on one real Redis: an approval given through one is honoured by the
other, and is still used only once across the fleet."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from authz.stack import Stack, sidecar_name
from tests.e2e.conftest import executed
from tests.e2e.test_approvals import GEMINI, admin, approval_id, call, sidecar_events, text_of
from tests.e2e.test_approvals import write_config as write_approvals_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("approvals-fleet")
    record = base / "executed.jsonl"
    record.touch()
    stack = Stack(
        config_dir=write_approvals_config(base / "config"),
        outputs_dir=base / "outputs",
        workdir=base / "work",
        extra_env={"IMAGEGEN_RECORD_FILE": str(record)},
        replicas=2,
        sidecar_args=("--redis-url", redis.url),
    )
    with stack:
        yield stack


def _creator(stack: Stack, approval: str) -> int:
    for index in range(stack.replicas):
        events = sidecar_events(stack, "approval", sidecar_name(index))
        if any(e["approval_id"] == approval and e["action"] == "requested" for e in events):
            return index
    raise AssertionError(f"no replica logged the request of {approval}")


async def test_approval_through_one_replica_is_honoured_by_the_other(fleet: Stack) -> None:
    for round_no in range(3):
        args = {"prompt": f"a logo, round {round_no}", "filenameHint": f"fleet-{round_no}"}
        held = approval_id(await call(fleet, "agent-a", GEMINI, args))
        creator = _creator(fleet, held)
        other = 1 - creator
        # both replicas see the same pending approval, with the digest its creator computed
        # (each replica has a key of its own here: none is configured)
        digests = set()
        for index in range(2):
            status, body, _ = admin(fleet.replica_admin_url(index), "GET", f"/approvals/{held}")
            assert status == 200 and body["status"] == "pending", (index, body)
            assert body["arguments"] == args
            digests.add(body["arguments_hmac"])
        assert len(digests) == 1
        status, body, _ = admin(
            fleet.replica_admin_url(other), "POST", f"/approvals/{held}/approve", body={}
        )
        assert status == 200 and body["status"] == "approved", body

        ran = await call(fleet, "agent-a", GEMINI, args)
        assert not ran.is_error, text_of(ran)
        status, body, _ = admin(fleet.replica_admin_url(creator), "GET", f"/approvals/{held}")
        assert body["status"] == "used"
        # and it is gone for the whole fleet
        assert approval_id(await call(fleet, "agent-a", GEMINI, args)) != held


async def test_concurrent_retries_run_once_across_replicas(fleet: Stack) -> None:
    args = {"prompt": "a logo, raced", "filenameHint": "fleet-race"}
    held = approval_id(await call(fleet, "agent-b", GEMINI, args))
    status, _, _ = admin(fleet.replica_admin_url(0), "POST", f"/approvals/{held}/approve", body={})
    assert status == 200
    before = sum(1 for e in executed(fleet) if e.get("grant") == "agent-b")
    results = await asyncio.gather(*(call(fleet, "agent-b", GEMINI, args) for _ in range(6)))
    ran = [r for r in results if not r.is_error]
    held_again = [r for r in results if r.is_error]
    assert len(ran) == 1, [text_of(r) for r in results]
    assert all(text_of(r).startswith("[APPROVAL REQUIRED] ") for r in held_again)
    assert all(approval_id(r) != held for r in held_again)
    assert sum(1 for e in executed(fleet) if e.get("grant") == "agent-b") == before + 1
