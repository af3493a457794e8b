"""Approvals in Redis: several sidecar replicas share held calls and their decisions.

Semantics are those of `ApprovalStore` (see `authz.approvals.base`), with one difference:
**time is the Redis server's clock.** Every script reads `TIME` on the server: a new
approval's `requested_at` and `expires_at`, `decided_at`, `used_at` and every expiry check
come from there, and the approvals a method returns are seen (`Approval.view`) at the
server time the script read. The `now` arguments are ignored, so replicas with skewed
clocks agree on what is pending, approved or expired.

Key layout (`P` is the prefix, default `mcp-authz`; `{a}` is the hash tag, see below):

    P:{a}:a:<approval id>   hash: the approval's fields (see `Approval`) without the
                            argument values, times as decimal seconds; expires
                            (PEXPIREAT) at expires_at + retention
    P:{a}:v:<approval id>   string: the canonical arguments JSON, for approvers; expires at
                            expires_at; deleted when the approval is used
    P:{a}:b:<binding>       string: the id of the live approval bound to that exact call;
                            expires at expires_at; deleted when the approval is used
    P:{a}:p:<grant digest>  sorted set: a grant's pending approval ids by expires_at (the
                            per-grant cap); an id leaves it when decided or past expiry;
                            the grant digest is the sha256 of the grant id
    P:{a}:i                 sorted set: approval id by requested_at (`list_approvals`)
    P:{a}:x                 sorted set: approval id by the time its record expires
    P:{a}:health            never written; `ping` reads it

Approval ids are `apr_` + 24 hex digits, bindings and grant digests 64 hex digits, so no
key needs escaping. An id given by a caller (the admin API passes user input) that does not
have that form is not found, without asking Redis. A record, once its retention is over,
expires on its own; both sorted sets drop its id the next time a `request` (up to 64 ids)
or `list_approvals` (all) runs, and `list_approvals` also drops ids whose record has
vanished otherwise.

**Bounds** (`ApprovalLimits`, checked inside the scripts, so they hold across replicas):
`request` refuses a new approval when its grant's pending set already holds
`max_pending_per_grant` ids (after dropping those past expiry), and, when the store holds
more than `max_records` records, first deletes up to 64 of those that expire first and are
no longer live (used, or past expiry). Arguments over `max_argument_bytes` are refused
before any script runs.

**Atomicity.** Each operation is ONE Lua script (EVALSHA via `register_script`):

- `request` reads the binding key and the approval it names; if that approval is pending,
  approved or denied and not expired it is returned, otherwise (the grant's cap allowing)
  a new pending approval is written with the binding key pointing to it. Two replicas
  racing on one call therefore end with ONE approval: the second script sees the first
  one's; two replicas racing for a grant's last place under the cap end with one more.
- `resolve` changes pending → approved/denied only before expiry (else: not found, or a
  conflict that reports the approval as it is), and frees the approval's place under its
  grant's cap.
- `consume` changes approved → used only before expiry and only for the caller's binding,
  and deletes the binding key (when it still names that approval) and the argument values,
  so the next identical call is held again as a new pending approval.
- `get` and `list_approvals` read the records, their argument values and the server time
  in one script; `list_approvals` reads one page after a cursor.

**Redis Cluster.** Every key of a prefix carries the hash tag `{a}`: all approvals of a
deployment live on ONE shard (a different one from the counters' `{c}`, possibly). `request`
and `list_approvals` read approval records whose ids they find in the binding key or the
index; those keys are not declared to the script, which Redis Cluster allows because they
hash to the declared keys' slot. Approvals are few (one per held call), so one shard is
plenty.

**Stored data.** The call's argument VALUES (the canonical JSON text) are stored while the
approval is live: approvers must see them through the admin API to decide. Anyone who can
read the Redis keys can read them until the approval is used or expires; protect Redis
accordingly (ACL, TLS, no shared instance). The record itself (grant, tool, argument keys,
`arguments_hmac`, times, decision) stays `RETENTION_SECONDS` after expiry (one day by
default).

Failure: every operation has a deadline (`timeout`, default 0.25 s), `from_url` sets the
same socket connect/read timeouts and disables client retries. Any Redis error, timeout or
refused connection is raised as `ApprovalStoreUnavailable` (the Redis exception chained);
the caller fails closed (a held call stays held). A script that timed out may still have
run: a `request` may have created an approval the caller never saw (the retry finds it), a
`consume` may have used an approval without the caller learning it (the call is refused
and held again), a `resolve` may have decided (the approver sees it when they look again).
Scripts are reloaded transparently after a Redis restart (NOSCRIPT). Redis replication is
asynchronous: after a failover, or a restart without persistence, recent approvals and
decisions may be lost; held calls are then held again, never let through unapproved.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from authz.approvals.base import (
    RETENTION_SECONDS,
    ApprovalConflict,
    ApprovalLimits,
    ApprovalNotFound,
    ApprovalRequest,
    ApprovalStoreUnavailable,
    arguments_hmac,
    new_approval_id,
    new_digest_key,
)
from authz.model import Approval, ApprovalStatus, Cursor
from authz.redis_scripts import DEFAULT_PREFIX, DEFAULT_TIMEOUT, ScriptStore

__all__ = ["HASH_TAG", "LIST_BATCH", "PRUNE_BATCH", "RedisApprovalStore"]

HASH_TAG: Final = "{a}"
PRUNE_BATCH: Final = 64
"""How many dropped records a `request` removes from the indexes at most (and how many
finished records it deletes at most when the store is over its bound)."""
LIST_BATCH: Final = 128
"""Index entries `list_approvals` reads at a time while it fills a page."""

_ID = re.compile(r"apr_[0-9a-f]{24}")
_BINDING = re.compile(r"[0-9a-f]{64}")

_PRELUDE = """
if redis.replicate_commands then redis.replicate_commands() end
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local function fmt(x) return string.format('%.6f', x) end
local function ms(x) return string.format('%.0f', math.ceil(x * 1000)) end
local function live(status, expires)
  return expires and now < expires
     and (status == 'pending' or status == 'approved' or status == 'denied')
end
"""

REQUEST_LUA: Final = (
    _PRELUDE
    + """
-- KEYS: binding key, index (by requested_at), drops (by record expiry), new record key,
--       the grant's pending set, new values key.
-- ARGV: record key prefix, values key prefix, new id, ttl seconds, retention seconds,
--       max pending per grant, max records, arguments JSON, then field/value pairs.
-- Reply: {sec, usec, 0, existing record, its values or false}
--      | {sec, usec, 1, new record, its values} | {sec, usec, 2} (the new id is taken;
--        the caller retries with another one) | {sec, usec, 3, pending} (the grant's cap).
local id = redis.call('GET', KEYS[1])
if id then
  local rec = ARGV[1] .. id
  local f = redis.call('HMGET', rec, 'status', 'expires_at')
  if live(f[1], tonumber(f[2])) then
    return {time[1], time[2], 0, redis.call('HGETALL', rec), redis.call('GET', ARGV[2] .. id)}
  end
end
if redis.call('EXISTS', KEYS[4]) == 1 then return {time[1], time[2], 2} end
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', fmt(now))
local pending = redis.call('ZCARD', KEYS[5])
if pending >= tonumber(ARGV[6]) then return {time[1], time[2], 3, pending} end
local expires = now + tonumber(ARGV[4])
local drop = expires + tonumber(ARGV[5])
local fields = {'id', ARGV[3], 'status', 'pending',
                'requested_at', fmt(now), 'expires_at', fmt(expires), 'pending_key', KEYS[5]}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[4], unpack(fields))
redis.call('PEXPIREAT', KEYS[4], ms(drop))
redis.call('SET', KEYS[6], ARGV[8])
redis.call('PEXPIREAT', KEYS[6], ms(expires))
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ms(expires))
redis.call('ZADD', KEYS[5], fmt(expires), ARGV[3])
local ttl = redis.call('PTTL', KEYS[5])
if ttl < 0 or ttl < (expires - now) * 1000 then redis.call('PEXPIREAT', KEYS[5], ms(expires)) end
local dropped = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', fmt(now), 'LIMIT', 0, PRUNE)
if #dropped > 0 then
  redis.call('ZREM', KEYS[2], unpack(dropped))
  redis.call('ZREM', KEYS[3], unpack(dropped))
end
-- over the bound: delete the records that expire first, while they are no longer live
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[7])
if over >= 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[3], 0, PRUNE - 1)) do
    if over < 0 then break end
    local rec = ARGV[1] .. old
    local f = redis.call('HMGET', rec, 'status', 'expires_at')
    if live(f[1], tonumber(f[2])) then break end
    redis.call('DEL', rec, ARGV[2] .. old)
    redis.call('ZREM', KEYS[2], old)
    redis.call('ZREM', KEYS[3], old)
    over = over - 1
  end
end
redis.call('ZADD', KEYS[2], fmt(now), ARGV[3])
redis.call('ZADD', KEYS[3], fmt(drop), ARGV[3])
return {time[1], time[2], 1, redis.call('HGETALL', KEYS[4]), ARGV[8]}
""".replace("PRUNE", str(PRUNE_BATCH))
)

DECIDE_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record, KEYS[2]: its values. ARGV: new status, approver, '1' and a reason,
-- or '0'. Reply: {sec, usec, 0} not found | {sec, usec, 1, record, values} decided
--        | {sec, usec, 2, record, values} not pending, or expired.
if redis.call('EXISTS', KEYS[1]) == 0 then return {time[1], time[2], 0} end
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'pending_key', 'id')
if f[1] ~= 'pending' or not (now < tonumber(f[2])) then
  return {time[1], time[2], 2, redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'decided_at', fmt(now), 'decided_by', ARGV[2])
if ARGV[3] == '1' then redis.call('HSET', KEYS[1], 'reason', ARGV[4]) end
-- decided: no longer counts against the grant's cap (the set shares the record's slot)
if f[3] then redis.call('ZREM', f[3], f[4]) end
return {time[1], time[2], 1, redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
"""
)

CONSUME_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record, KEYS[2]: the caller's binding key, KEYS[3]: the record's values.
-- ARGV: the id, the binding.
-- Reply: 1 used now, 0 not approved, expired, used, bound to another call, or unknown.
local f = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'binding')
if f[1] ~= 'approved' or f[3] ~= ARGV[2] or not (now < tonumber(f[2])) then return 0 end
redis.call('HSET', KEYS[1], 'status', 'used', 'used_at', fmt(now))
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""
)

GET_LUA: Final = (
    _PRELUDE
    + """
-- KEYS[1]: the record, KEYS[2]: its values.
-- Reply: {sec, usec, record, values or false} (an empty record when unknown).
return {time[1], time[2], redis.call('HGETALL', KEYS[1]), redis.call('GET', KEYS[2])}
"""
)

LIST_LUA: Final = (
    _PRELUDE
    + """
-- KEYS: index (by requested_at), drops (by record expiry).
-- ARGV: record key prefix, values key prefix, cursor score ('-inf' for the start), cursor
--       id ('' for the start), how many to return at most, wanted statuses joined by ','
--       ('' for all).
-- Drops the ids whose record has expired or vanished. Returns the approvals after the
-- cursor whose status (as seen now: pending/approved past expiry read as expired) is
-- wanted, oldest first. Reply: {sec, usec, record, values or false, record, ...}.
local dropped = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', fmt(now))
for i = 1, #dropped do
  redis.call('ZREM', KEYS[1], dropped[i])
  redis.call('ZREM', KEYS[2], dropped[i])
end
local wanted = {}
local any = ARGV[6] == ''
for status in string.gmatch(ARGV[6], '[^,]+') do wanted[status] = true end
local after_score = ARGV[3] ~= '-inf' and tonumber(ARGV[3]) or nil
local limit = tonumber(ARGV[5])
local reply = {time[1], time[2]}
local found = 0
local offset = 0
while found < limit do
  local batch = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[3], '+inf', 'WITHSCORES',
                          'LIMIT', offset, BATCH)
  if #batch == 0 then break end
  offset = offset + #batch / 2
  for i = 1, #batch, 2 do
    local id, score = batch[i], tonumber(batch[i + 1])
    if not (after_score and score == after_score and id <= ARGV[4]) then
      local record = redis.call('HGETALL', ARGV[1] .. id)
      if #record == 0 then
        redis.call('ZREM', KEYS[1], id)
        redis.call('ZREM', KEYS[2], id)
        offset = offset - 1
      else
        local f = redis.call('HMGET', ARGV[1] .. id, 'status', 'expires_at')
        local status = f[1]
        if (status == 'pending' or status == 'approved') and not (now < tonumber(f[2])) then
          status = 'expired'
        end
        if any or wanted[status] then
          reply[#reply + 1] = record
          reply[#reply + 1] = redis.call('GET', ARGV[2] .. id)
          found = found + 1
          if found >= limit then break end
        end
      end
    end
  end
end
return reply
""".replace("BATCH", str(LIST_BATCH))
)

_TEXT_FIELDS = (
    "binding",
    "grant_id",
    "grant_label",
    "policy",
    "policy_hash",
    "tool",
    "arguments_hmac",
    "argument_keys",
    "rule",
    "decision_id",
)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _server_now(reply: Sequence[Any]) -> float:
    """The server time a script read (`TIME` seconds and microseconds, its first items)."""
    return int(reply[0]) + int(reply[1]) / 1_000_000


def _approval(flat: Sequence[Any], values: Any) -> Approval:
    """An `Approval` from a record's HGETALL (a flat field/value list) and its values key
    (None or False when they are no longer kept)."""
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
        # records written before these fields existed read as "" and no keys
        arguments_hmac=fields.get("arguments_hmac", ""),
        argument_keys=tuple(json.loads(fields.get("argument_keys", "[]"))),
        arguments_json=_text(values) if values else None,
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
    bounds every operation. Replicas that share approvals should share `digest_key` too
    (`MCP_AUTHZ_APPROVAL_DIGEST_KEY`): each approval's `arguments_hmac` is computed once, by
    the replica that creates it, so approvals work across replicas either way, but only a
    shared key gives equal arguments equal digests fleet-wide.
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
        limits: ApprovalLimits | None = None,
        digest_key: bytes | None = None,
    ) -> None:
        if not retention_seconds >= 0:
            raise ValueError(f"retention must be >= 0, got {retention_seconds}")
        super().__init__(client, prefix=prefix, timeout=timeout, url=url, owns_client=owns_client)
        self._retention = retention_seconds
        self._limits = limits if limits is not None else ApprovalLimits()
        self._key = digest_key if digest_key is not None else new_digest_key()
        self._request = client.register_script(REQUEST_LUA)
        self._decide = client.register_script(DECIDE_LUA)
        self._consume = client.register_script(CONSUME_LUA)
        self._get = client.register_script(GET_LUA)
        self._list = client.register_script(LIST_LUA)

    @property
    def limits(self) -> ApprovalLimits:
        return self._limits

    def record_key(self, approval_id: str) -> str:
        """The Redis key of an approval's record: `<prefix>:{a}:a:<id>`."""
        return f"{self._base}a:{approval_id}"

    def values_key(self, approval_id: str) -> str:
        """The Redis key of an approval's argument values: `<prefix>:{a}:v:<id>`."""
        return f"{self._base}v:{approval_id}"

    def binding_key(self, binding: str) -> str:
        """The Redis key naming the live approval of a call: `<prefix>:{a}:b:<binding>`."""
        return f"{self._base}b:{binding}"

    def pending_key(self, grant_id: str) -> str:
        """The sorted set of a grant's pending approvals: `<prefix>:{a}:p:<sha256(grant)>`."""
        return f"{self._base}p:{hashlib.sha256(grant_id.encode('utf-8')).hexdigest()}"

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

        `now` is ignored: times and expiry come from Redis `TIME`. Raises `ApprovalRefused`
        past a bound, `ApprovalStoreUnavailable` when Redis cannot answer within the timeout.
        """
        if not request.ttl_seconds > 0:
            raise ValueError(f"approval ttl must be positive, got {request.ttl_seconds}")
        self._limits.check_size(request)
        binding = request.binding
        values = {
            "binding": binding,
            "grant_id": request.grant_id,
            "grant_label": request.grant_label,
            "policy": request.policy,
            "policy_hash": request.policy_hash,
            "tool": request.tool,
            "arguments_hmac": arguments_hmac(self._key, request.arguments_json),
            "argument_keys": json.dumps(request.argument_keys, ensure_ascii=False),
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
                self.pending_key(request.grant_id),
                self.values_key(approval_id),
            ]
            args: list[str | int | float] = [
                self.record_key(""),
                self.values_key(""),
                approval_id,
                request.ttl_seconds,
                self._retention,
                self._limits.max_pending_per_grant,
                self._limits.max_records,
                request.arguments_json,
                *pairs,
            ]
            reply = await self._call(self._request, keys, args)
            outcome = int(reply[2])
            if outcome in (0, 1):
                approval = _approval(reply[3], reply[4]).view(_server_now(reply))
                return approval, outcome == 1
            if outcome == 3:
                raise self._limits.cap_reached()
        raise ApprovalStoreUnavailable(f"{self.describe()}: no free approval id")

    async def consume(self, approval_id: str, binding: str, now: float) -> bool:
        """approved → used, atomically (server time); False if it is not approved, expired,
        already used, bound to another call, or unknown."""
        if not _ID.fullmatch(approval_id) or not _BINDING.fullmatch(binding):
            return False
        keys = [
            self.record_key(approval_id),
            self.binding_key(binding),
            self.values_key(approval_id),
        ]
        return int(await self._call(self._consume, keys, [approval_id, binding])) == 1

    async def resolve(
        self, approval_id: str, *, approve: bool, approver: str, reason: str | None, now: float
    ) -> Approval:
        """pending → approved/denied before expiry (server time); raises ApprovalNotFound or
        ApprovalConflict (with the approval as it is)."""
        if not _ID.fullmatch(approval_id):
            raise ApprovalNotFound(approval_id)
        status = ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED
        args = [status.value, approver, "0" if reason is None else "1", reason or ""]
        keys = [self.record_key(approval_id), self.values_key(approval_id)]
        reply = await self._call(self._decide, keys, args)
        outcome = int(reply[2])
        if outcome == 0:
            raise ApprovalNotFound(approval_id)
        seen = _approval(reply[3], reply[4]).view(_server_now(reply))
        if outcome == 2:
            raise ApprovalConflict(seen, f"approval {approval_id} is {seen.status.value}")
        return seen

    async def get(self, approval_id: str, now: float) -> Approval:
        """One approval as seen at the server's time; raises ApprovalNotFound."""
        if not _ID.fullmatch(approval_id):
            raise ApprovalNotFound(approval_id)
        keys = [self.record_key(approval_id), self.values_key(approval_id)]
        reply = await self._call(self._get, keys, [])
        if not reply[2]:
            raise ApprovalNotFound(approval_id)
        return _approval(reply[2], reply[3]).view(_server_now(reply))

    async def list_approvals(
        self,
        now: float,
        *,
        statuses: Sequence[ApprovalStatus] = (),
        after: Cursor | None = None,
        limit: int | None = None,
    ) -> list[Approval]:
        """Known approvals as seen at the server's time, oldest first; only `statuses` when
        given, only those after `after`, at most `limit` (all when None)."""
        if limit is not None and limit < 1:
            return []
        args = [
            self.record_key(""),
            self.values_key(""),
            "-inf" if after is None else f"{after[0]:.6f}",
            "" if after is None else after[1],
            limit if limit is not None else 2**31,
            ",".join(sorted({s.value for s in statuses})),
        ]
        reply = await self._call(self._list, [self.index_key, self.drops_key], args)
        server_now = _server_now(reply)
        wanted = set(statuses)
        items = reply[2:]
        seen = (_approval(items[i], items[i + 1]).view(server_now) for i in range(0, len(items), 2))
        return sorted(
            (a for a in seen if not wanted or a.status in wanted),
            key=lambda a: a.cursor,
        )

    async def _call(self, script: Any, keys: list[str], args: Sequence[Any]) -> Any:
        reply = await self._script(script, keys, args)
        if not isinstance(reply, (list, int)) or (isinstance(reply, list) and len(reply) < 2):
            raise ApprovalStoreUnavailable(f"{self.describe()}: unexpected reply {reply!r}")
        return reply
