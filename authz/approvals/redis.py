"""Approvals in Redis: several sidecar replicas share held calls and their decisions.

Semantics are those of `ApprovalStore` (see `authz.approvals.base`), with one difference:
**time is the Redis server's clock.** Every script reads `TIME` on the server: a new
approval's `requested_at` and `expires_at`, `decided_at`, `used_at` and every expiry check
come from there, and the approvals a method returns are seen (`Approval.view`) at the
server time the script read. The `now` arguments are ignored, so replicas with skewed
clocks agree on what is pending, approved or expired.

Key layout (`P` is the prefix, default `mcp-authz`; `{a}` is the hash tag, see below):

    P:{a}:a:<approval id>   hash: the approval's fields (see `Approval`), times as decimal
                            seconds; expires (PEXPIREAT) at expires_at + retention
    P:{a}:b:<binding>       string: the id of the live approval bound to that exact call;
                            expires at expires_at; deleted when the approval is used
    P:{a}:i                 sorted set: approval id by requested_at (`list_approvals`)
    P:{a}:x                 sorted set: approval id by the time its record expires
    P:{a}:health            never written; `ping` reads it

Approval ids are `apr_` + 24 hex digits and bindings 64 hex digits, so no key needs escaping.
An id given by a caller (the admin API passes user input) that does not have that form is
not found, without asking Redis. A record, once its retention is over, expires on its own;
both sorted sets drop its id the next time a `request` (up to 64 ids) or `list_approvals`
(all) runs, and `list_approvals` also drops ids whose record has vanished otherwise.

**Atomicity.** Each operation is ONE Lua script (EVALSHA via `register_script`):

- `request` reads the binding key and the approval it names; if that approval is pending,
  approved or denied and not expired it is returned, otherwise a new pending approval is
  written with the binding key pointing to it. Two replicas racing on one call therefore
  end with ONE approval: the second script sees the first one's.
- `decide` changes pending → approved/denied only before expiry (else: not found, or a
  conflict that reports the approval as it is).
- `consume` changes approved → used only before expiry and only for the caller's binding,
  and deletes the binding key (when it still names that approval), so the next identical
  call is held again as a new pending approval.
- `get` and `list_approvals` read the records and the server time in one script.

**Redis Cluster.** Every key of a prefix carries the hash tag `{a}`: all approvals of a
deployment live on ONE shard (a different one from the counters' `{c}`, possibly). `request`
and `list_approvals` read approval records whose ids they find in the binding key or the
index; those keys are not declared to the script, which Redis Cluster allows because they
hash to the declared keys' slot. Approvals are few (one per held call), so one shard is
plenty.

**Stored data.** A record holds the call's argument VALUES (`arguments_json`, the
canonical JSON text): approvers must see them through the admin API to decide. Anyone who
can read the Redis keys can read them for the retention period (`RETENTION_SECONDS` after
expiry, one day by default); protect Redis accordingly (ACL, TLS, no shared instance).

Failure: every operation has a deadline (`timeout`, default 0.25 s), `from_url` sets the
same socket connect/read timeouts and disables client retries. Any Redis error, timeout or
refused connection is raised as `ApprovalStoreUnavailable` (the Redis exception chained);
the caller fails closed (a held call stays held). A script that timed out may still have
run: a `request` may have created an approval the caller never saw (the retry finds it), a
`consume` may have used an approval without the caller learning it (the call is refused
and held again), a `decide` may have decided (the approver sees it when they look again).
Scripts are reloaded transparently after a Redis restart (NOSCRIPT). Redis replication is
asynchronous: after a failover, or a restart without persistence, recent approvals and
decisions may be lost; held calls are then held again, never let through unapproved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from authz.approvals.base import (
    RETENTION_SECONDS,
    Approval,
    ApprovalConflict,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStatus,
    ApprovalStoreUnavailable,
    canonical_json,
    new_approval_id,
)
from authz.redis_scripts import DEFAULT_PREFIX, DEFAULT_TIMEOUT, ScriptStore

__all__ = ["HASH_TAG", "PRUNE_BATCH", "RedisApprovalStore"]

HASH_TAG: Final = "{a}"
PRUNE_BATCH: Final = 64
"""How many dropped records a `request` removes from the indexes at most."""

_ID = re.compile(r"apr_[0-9a-f]{24}")
_BINDING = re.compile(r"[0-9a-f]{64}")

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function ms(x) return string.format('%.0f', math.ceil(x * 1000)) end
"""

REQUEST_LUA: Final = (
    _PRELUDE
    + """
-- KEYS: binding key, index (by requested_at), drops (by record expiry), new record key.
-- ARGV: record key prefix, new id, ttl seconds, retention seconds, then field/value pairs.
-- Reply: {sec, usec, 0, existing record} | {sec, usec, 1, new record} | {sec, usec, 2}
-- (2: the new id is taken; the caller retries with another one).
local id = redis.call('GET', KEYS[1])
if id then
  local rec = ARGV[1] .. id
  local f = redis.call('HMGET', rec, 'status', 'expires_at')
  local status, expires = f[1], tonumber(f[2])
  if expires and now < expires
     and (status == 'pending' or status == 'approved' or status == 'denied') then
    return {time[1], time[2], 0, redis.call('HGETALL', rec)}
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {time[1], time[2], 2} end
local expires = now + tonumber(ARGV[3])
local drop = expires + tonumber(ARGV[4])
local fields = {'id', ARGV[2], 'status', 'pending',
                'requested_at', fmt(now), 'expires_at', fmt(expires)}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('PEXPIREAT', KEYS[4], ms(drop))
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PEXPIREAT', KEYS[1], ms(expires))
local dropped = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, PRUNE)
if #dropped > 0 then
  redis.call('ZREM', KEYS[2], unpack(dropped))
  redis.call('ZREM', KEYS[3], unpack(dropped))
end
redis.call('ZADD', KEYS[2], fmt(now), ARGV[2])
redis.call('ZADD', KEYS[3], fmt(drop), ARGV[2])
return {time[1], time[2], 1, redis.call('HGETALL', KEYS[4])}
""".replace("PRUNE", str(PRUNE_BATCH))
)

DECIDE_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record. ARGV: new status, approver, '1' and a reason, or '0'.
-- Reply: {sec, usec, 0} not found | {sec, usec, 1, record} decided
--        | {sec, usec, 2, record} not pending, or expired.
if redis.call('EXISTS', KEYS[1]) == 0 then return {time[1], time[2], 0} end
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at')
if f[1] ~= 'pending' or not (now < tonumber(f[2])) then
  return {time[1], time[2], 2, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', fmt(now), 'decided_by', ARGV[2])
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'reason', ARGV[4]) end
return {time[1], time[2], 1, redis.call('HGETALL', KEYS[1])}
"""
)

CONSUME_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record, KEYS[2]: the caller's binding key. ARGV: the id, the binding.
-- Reply: 1 used now, 0 not approved, expired, used, bound to another call, or unknown.
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'binding')
if f[1] ~= 'approved' or f[3] ~= ARGV[2] or not (now < tonumber(f[2])) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'used', 'used_at', fmt(now))
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
)

GET_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record. Reply: {sec, usec, record} (an empty record when unknown).
return {time[1], time[2], redis.call('HGETALL', KEYS[1])}
"""
)

LIST_LUA: Final = (
    _PRELUDE
    + """
-- KEYS: index (by requested_at), drops (by record expiry). ARGV[1]: record key prefix.
-- Drops the ids whose record has expired or vanished. Reply: {sec, usec, {record}...}.
local dropped = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
for i = 1, #dropped do
  redis.call('ZREM', KEYS[1], dropped[i])
  redis.call('ZREM', KEYS[2], dropped[i])
end
local reply = {time[1], time[2]}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('HGETALL', ARGV[1] .. id)
  if #record > 0 then
    reply[#reply + 1] = record
  else
    redis.call('ZREM', KEYS[1], id)
    redis.call('ZREM', KEYS[2], id)
  end
end
return reply
"""
)

_TEXT_FIELDS = (
    "binding",
    "grant_id",
    "grant_label",
    "policy",
    "policy_hash",
    "tool",
    "arguments_digest",
    "arguments_json",
    "rule",
    "decision_id",
)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _server_now(reply: Sequence[Any]) -> float:
    """The server time a script read (`TIME` seconds and microseconds, its first items)."""
    return int(reply[0]) + int(reply[1]) / 1_000_000


def _approval(flat: Sequence[Any]) -> Approval:
    """An `Approval` from a record's HGETALL (a flat field/value list)."""
    fields = {_text(k): _text(v) for k, v in zip(flat[::2], flat[1::2], strict=True)}

    def optional(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value is not None else None

    return Approval(
        id=fields["id"],
        status=ApprovalStatus(fields["status"]),
        binding=fields["binding"],
        grant_id=fields["grant_id"],
        grant_label=fields["grant_label"],
        policy=fields["policy"],
        policy_hash=fields["policy_hash"],
        tool=fields["tool"],
        arguments_digest=fields["arguments_digest"],
        arguments_json=fields["arguments_json"],
        rule=fields["rule"],
        requested_at=float(fields["requested_at"]),
        expires_at=float(fields["expires_at"]),
        decision_id=fields.get("decision_id", ""),
        decided_at=optional("decided_at"),
        decided_by=fields.get("decided_by"),
        reason=fields.get("reason"),
        used_at=optional("used_at"),
    )


class RedisApprovalStore(ScriptStore):
    """`ApprovalStore` in Redis (standalone or Cluster): approvals shared by replicas.

    The store owns `client` (`close` closes it) unless `owns_client` is False. `timeout`
    bounds every operation.
    """

    hash_tag = HASH_TAG
    unavailable = ApprovalStoreUnavailable

    def __init__(
        self,
        client: Redis | RedisCluster,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_TIMEOUT,
        url: str | None = None,
        retention_seconds: float = RETENTION_SECONDS,
        owns_client: bool = True,
    ) -> None:
        if not retention_seconds >= 0:
            raise ValueError(f"retention must be >= 0, got {retention_seconds}")
        super().__init__(client, prefix=prefix, timeout=timeout, url=url, owns_client=owns_client)
        self._retention = retention_seconds
        self._request = client.register_script(REQUEST_LUA)
        self._decide = client.register_script(DECIDE_LUA)
        self._consume = client.register_script(CONSUME_LUA)
        self._get = client.register_script(GET_LUA)
        self._list = client.register_script(LIST_LUA)

    def record_key(self, approval_id: str) -> str:
        """The Redis key of an approval's record: `<prefix>:{a}:a:<id>`."""
        return f"{self._base}a:{approval_id}"

    def binding_key(self, binding: str) -> str:
        """The Redis key naming the live approval of a call: `<prefix>:{a}:b:<binding>`."""
        return f"{self._base}b:{binding}"

    @property
    def index_key(self) -> str:
        """The sorted set of approval ids by requested_at."""
        return f"{self._base}i"

    @property
    def drops_key(self) -> str:
        """The sorted set of approval ids by the time their record expires."""
        return f"{self._base}x"

    async def request(self, request: ApprovalRequest, now: float) -> tuple[Approval, bool]:
        """The live approval bound to this call, or a new pending one: (approval, created).

        `now` is ignored: times and expiry come from Redis `TIME`. Raises
        `ApprovalStoreUnavailable` when Redis cannot answer within the timeout.
        """
        if not request.ttl_seconds > 0:
            raise ValueError(f"approval ttl must be positive, got {request.ttl_seconds}")
        binding = request.binding
        values = {
            "binding": binding,
            "grant_id": request.grant_id,
            "grant_label": request.grant_label,
            "policy": request.policy,
            "policy_hash": request.policy_hash,
            "tool": request.tool,
            "arguments_digest": request.arguments_digest,
            "arguments_json": canonical_json(dict(request.arguments)),
            "rule": request.rule,
            "decision_id": request.decision_id,
        }
        pairs = [item for name in _TEXT_FIELDS for item in (name, values[name])]
        for _ in range(3):
            approval_id = new_approval_id()
            keys = [
                self.binding_key(binding),
                self.index_key,
                self.drops_key,
                self.record_key(approval_id),
            ]
            args: list[str | int | float] = [
                self.record_key(""),
                approval_id,
                request.ttl_seconds,
                self._retention,
                *pairs,
            ]
            reply = await self._call(self._request, keys, args)
            outcome = int(reply[2])
            if outcome in (0, 1):
                approval = _approval(reply[3]).view(_server_now(reply))
                return approval, outcome == 1
        raise ApprovalStoreUnavailable(f"{self.describe()}: no free approval id")

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        """approved → used, atomically (server time); False if it is not approved, expired,
        already used, bound to another call, or unknown."""
        if not _ID.fullmatch(approval_id) or not _BINDING.fullmatch(binding):
            return False
        keys = [self.record_key(approval_id), self.binding_key(binding)]
        return int(await self._call(self._consume, keys, [approval_id, binding])) == 1

    async def decide(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        """pending → approved/denied before expiry (server time); raises ApprovalNotFound or
        ApprovalConflict (with the approval as it is)."""
        if not _ID.fullmatch(approval_id):
            raise ApprovalNotFound(approval_id)
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        args = [status.value, approver, "0" if reason is None else "1", reason or ""]
        reply = await self._call(self._decide, [self.record_key(approval_id)], args)
        outcome = int(reply[2])
        if outcome == 0:
            raise ApprovalNotFound(approval_id)
        seen = _approval(reply[3]).view(_server_now(reply))
        if outcome == 2:
            raise ApprovalConflict(seen, f"approval {approval_id} is {seen.status.value}")
        return seen

    async def get(self, approval_id: str, now: float) -> Approval:
        """One approval as seen at the server's time; raises ApprovalNotFound."""
        if not _ID.fullmatch(approval_id):
            raise ApprovalNotFound(approval_id)
        reply = await self._call(self._get, [self.record_key(approval_id)], [])
        if not reply[2]:
            raise ApprovalNotFound(approval_id)
        return _approval(reply[2]).view(_server_now(reply))

    async def list_approvals(
        self, now: float, *, statuses: Sequence[ApprovalStatus] = ()
    ) -> list[Approval]:
        """Known approvals as seen at the server's time, oldest first; only `statuses` when
        given."""
        reply = await self._call(
            self._list, [self.index_key, self.drops_key], [self.record_key("")]
        )
        server_now = _server_now(reply)
        wanted = set(statuses)
        seen = (_approval(flat).view(server_now) for flat in reply[2:])
        return sorted(
            (a for a in seen if not wanted or a.status in wanted),
            key=lambda a: (a.requested_at, a.id),
        )

    async def _call(self, script: Any, keys: list[str], args: Sequence[Any]) -> Any:
        reply = await self._script(script, keys, args)
        if not isinstance(reply, (list, int)) or (isinstance(reply, list) and len(reply) < 2):
            raise ApprovalStoreUnavailable(f"{self.describe()}: unexpected reply {reply!r}")
        return reply
