"""The Redis store: live session state, deadline index, offsets, fencing, outbox.

The key layout is in :mod:`pipeline.store.keys`. Each batch costs one read
round trip (a pipeline: the batch's key states plus the keys falling due) and
one write round trip (the ``COMMIT`` script below, atomic: it checks the epoch
and the applied offsets, then writes states, deadlines, indexes, outbox and
offsets together, or nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.core.event import SessionKey
from pipeline.core.session import KeyState
from pipeline.exceptions import FencedError, RedisUnavailable
from pipeline.store.base import Claim, Commit, StaleStateError
from pipeline.store.keys import Keys, keyid

# KEYS: meta, due, open, outbox, idx, hist, states
# ARGV: epoch, clock_ms, shard prefix, payload (msgpack, one argument: packing many
#       small arguments costs the client more than the whole script costs Redis),
#       token (written to meta by the commit, "" = none and no check),
#       expected tokens* (meta must hold one of them, "" standing for none):
#   [offsets [[topic, offset]...],
#    dropped [[keyid, session_id]...]                        (event logs to delete),
#    states  [[keyid, blob|"", due|-1, index|"", [[session_id, [item...]]...]]...],
#    outgoing [message...]       (appended to the outbox list, in order),
#    acked                       (messages trimmed from the outbox head: sent and acknowledged),
#    history [[session_id, end_ms, record]...], history_min_ms, history_max,
#    at_ms                       (the writer's wall time, kept with clock_ms; 0 = not given)]
#   index: "<sid>\x1f<project>\x1f<user>" of the key's open session
COMMIT_LUA = """
local meta, due, open, outbox, idx, hist, heads = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local epoch = redis.call('HGET', meta, 'epoch')
if epoch ~= ARGV[1] then
  if not epoch or tonumber(epoch) < tonumber(ARGV[1]) then
    -- epochs only grow: a lower one (or none) is Redis having lost the claim
    return redis.error_reply('STALE epoch ' .. tostring(epoch) .. ' < ' .. ARGV[1])
  end
  return redis.error_reply('FENCED epoch ' .. tostring(epoch) .. ' ~= ' .. ARGV[1])
end
local token = ARGV[5]
if token ~= '' then
  local held = redis.call('HGET', meta, 'token') or ''
  local known = false
  for x = 6, #ARGV do
    if ARGV[x] == held then known = true end
  end
  if not known then
    return redis.error_reply('STALE commit token ' .. held .. ' is not one this worker wrote last')
  end
end
local shard = ARGV[3]
local p = cmsgpack.unpack(ARGV[4])
local offsets, dropped, states, outgoing, acked, history = p[1], p[2], p[3], p[4], p[5], p[6]
for _, o in ipairs(offsets) do
  local stored = redis.call('HGET', meta, 'off:' .. o[1])
  if stored and tonumber(stored) >= tonumber(o[2]) then
    if token ~= '' then redis.call('HSET', meta, 'token', token) end
    return 0
  end
end
for _, o in ipairs(offsets) do
  redis.call('HSET', meta, 'off:' .. o[1], o[2])
end
local function split(entry)
  local a = string.find(entry, '\\31', 1, true)
  local b = string.find(entry, '\\31', a + 1, true)
  return string.sub(entry, 1, a - 1), string.sub(entry, a + 1, b - 1), string.sub(entry, b + 1)
end
local function index(entry, add, kid)
  local sid, project, user = split(entry)
  local pkey = shard .. 'proj:' .. project
  local ukey = shard .. 'user:' .. string.len(project) .. ':' .. project .. ':' .. user
  if add then
    redis.call('HSET', open, sid, kid)
    redis.call('SADD', pkey, sid)
    if user ~= '' then redis.call('SADD', ukey, sid) end
  else
    redis.call('HDEL', open, sid)
    redis.call('SREM', pkey, sid)
    if user ~= '' then redis.call('SREM', ukey, sid) end
  end
end
local function push(key, items)
  for x = 1, #items, 500 do
    redis.call('RPUSH', key, unpack(items, x, math.min(x + 499, #items)))
  end
end
for _, d in ipairs(dropped) do
  redis.call('DEL', shard .. 'e:' .. d[1] .. '|' .. d[2])
end
-- the states: one multi-field write per kind of change, in chunks
local sets, dels, zadds, zrems, kids = {}, {}, {}, {}, {}
for _, st in ipairs(states) do
  local kid, blob, d = st[1], st[2], st[3]
  for _, log in ipairs(st[5]) do
    push(shard .. 'e:' .. kid .. '|' .. log[1], log[2])
  end
  if blob == '' then
    dels[#dels + 1] = kid
  else
    sets[#sets + 1] = kid
    sets[#sets + 1] = blob
  end
  if d < 0 then
    zrems[#zrems + 1] = kid
  else
    zadds[#zadds + 1] = d
    zadds[#zadds + 1] = kid
  end
  kids[#kids + 1] = kid
end
local function chunked(command, key, args, step)
  for x = 1, #args, step do
    redis.call(command, key, unpack(args, x, math.min(x + step - 1, #args)))
  end
end
chunked('HSET', heads, sets, 500)
chunked('HDEL', heads, dels, 500)
chunked('ZADD', due, zadds, 500)
chunked('ZREM', due, zrems, 500)
-- the query indexes: only where a key's open session (or its user) changed
for x = 1, #kids, 500 do
  local last = math.min(x + 499, #kids)
  local olds = redis.call('HMGET', idx, unpack(kids, x, last))
  for y = x, last do
    local old, new, kid = olds[y - x + 1] or '', states[y][4], kids[y]
    if old ~= new then
      if old ~= '' then index(old, false, kid) end
      if new ~= '' then
        index(new, true, kid)
        redis.call('HSET', idx, kid, new)
      else
        redis.call('HDEL', idx, kid)
      end
    end
  end
end
if acked > 0 then
  redis.call('LTRIM', outbox, acked, -1)
end
push(outbox, outgoing)
for _, h in ipairs(history) do
  redis.call('ZADD', hist, h[2], h[1])
  redis.call('SET', shard .. 'h:' .. h[1], h[3])
end
local function forget(sids)
  for _, sid in ipairs(sids) do
    redis.call('ZREM', hist, sid)
    redis.call('DEL', shard .. 'h:' .. sid)
  end
end
forget(redis.call('ZRANGEBYSCORE', hist, '-inf', '(' .. p[7], 'LIMIT', 0, 1000))
local extra = redis.call('ZCARD', hist) - p[8]
if extra > 0 then
  forget(redis.call('ZRANGE', hist, 0, math.min(extra, 1000) - 1))
end
redis.call('HSET', meta, 'clock_ms', ARGV[2])
if p[9] and p[9] > 0 then redis.call('HSET', meta, 'clock_at_ms', p[9]) end
if token ~= '' then redis.call('HSET', meta, 'token', token) end
return 1
"""

# KEYS: meta (one slot: safe on Redis Cluster)
CLAIM_LUA = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return {epoch, redis.call('HGETALL', KEYS[1])}
"""

def _index_of(state: KeyState | None) -> str:
    """What the query indexes hold for a key: its open session, project and user."""
    if state is None or state.open is None:
        return ""
    s = state.open
    return f"{s.session_id}\x1f{s.project}\x1f{s.user_id or ''}"


def connect(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url``; nothing is sent until first use.

    ``options`` go to redis-py: AUTH and TLS (``password``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``, ``ssl_cert_reqs``), as
    :func:`pipeline.security.redis_options` builds them from the settings. A
    ``rediss://`` URL connects with TLS; values in the URL win over ``options``.
    """
    options.setdefault("health_check_interval", 30)
    return aioredis.Redis.from_url(url, decode_responses=False, **options)


class RedisStore:
    """:class:`~pipeline.store.base.SessionStore` on Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "sz",
        *,
        history_retention_ms: int = 86_400_000,
        history_max: int = 50_000,
    ) -> None:
        self.history_retention_ms = history_retention_ms
        self.history_max = history_max
        # decode_responses=False: every reply is bytes (typed loosely by redis-py)
        self.client: Any = client
        self.keys = Keys(prefix)
        self._commit = client.register_script(COMMIT_LUA)
        self._claim = client.register_script(CLAIM_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "sz", **options: int) -> RedisStore:
        return cls(connect(url), prefix, **options)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailable(
                f"cannot reach Redis ({exc}); check SESSIONIZER_REDIS_URL and that Redis is running"
            ) from None

    async def claim(self, partition: int) -> Claim:
        epoch, flat = await self._claim(keys=[self.keys.meta(partition)], args=[])
        # the list of partitions with state, for queries: its own slot, so not in the script
        await self.client.sadd(self.keys.shards, partition)
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        offsets = {k[4:]: int(v) for k, v in fields.items() if k.startswith("off:")}
        return Claim(partition, int(epoch), offsets, int(fields.get("clock_ms", 0)),
                     fields.get("token", ""), int(fields.get("clock_at_ms", 0)))

    def release(self, partition: int) -> None:
        """Nothing to let go of: no per-partition state lives in this client."""

    async def load(
        self, partition: int, keys: Iterable[SessionKey], due_until_ms: int | None, due_limit: int
    ) -> list[KeyState]:
        wanted = [keyid(k) for k in keys]
        pipe = self.client.pipeline(transaction=False)
        if wanted:
            pipe.hmget(self.keys.states(partition), wanted)
        if due_until_ms is not None and due_limit > 0:
            pipe.zrangebyscore(self.keys.due(partition), "-inf", due_until_ms, start=0, num=due_limit)
        replies = await pipe.execute()
        blobs: list[bytes | None] = list(replies.pop(0)) if wanted else []
        if due_until_ms is not None and due_limit > 0:
            seen = set(wanted)
            extra = [d.decode() for d in replies.pop(0) if d.decode() not in seen]
            if extra:
                wanted.extend(extra)
                blobs.extend(await self.client.hmget(self.keys.states(partition), extra))
        return await self._states(partition, wanted, blobs)

    async def _states(
        self, partition: int, kids: list[str], blobs: list[bytes | None]
    ) -> list[KeyState]:
        """Key states from their blobs plus their sessions' event logs (one round trip)."""
        states = [
            (kid, KeyState.from_state(orjson.loads(blob)))
            for kid, blob in zip(kids, blobs, strict=True)
            if blob is not None
        ]
        sessions = [(kid, s) for kid, state in states for s in state.sessions()]
        if sessions:
            pipe = self.client.pipeline(transaction=False)
            for kid, session in sessions:
                pipe.lrange(self.keys.events(partition, kid, session.session_id), 0, -1)
            loads = orjson.loads
            for (_, session), items in zip(sessions, await pipe.execute(), strict=True):
                session.replay_log([loads(item) for item in items])
        return [state for _, state in states]

    async def has_due(self, partition: int, until_ms: int) -> bool:
        return bool(await self.client.zcount(self.keys.due(partition), "-inf", until_ms))

    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        k = self.keys
        dumps = orjson.dumps
        states = []
        for key, state in commit.states.items():
            due = commit.due_ms.get(key)
            logs = []
            if state is not None:
                for session in state.sessions():
                    items = session.take_log()
                    if items:
                        logs.append([session.session_id, [dumps(item) for item in items]])
            states.append([
                keyid(key),
                b"" if state is None else state.head_json(),
                -1 if due is None else due,
                _index_of(state),
                logs,
            ])
        payload = msgpack.packb([
            [[topic, offset] for topic, offset in commit.offsets.items()],
            [[keyid(key), sid] for key, sid in commit.dropped],
            states,
            commit.outgoing,
            commit.acked,
            [[sid, end_ms, record] for sid, end_ms, record in commit.history],
            commit.clock_ms - self.history_retention_ms,
            self.history_max,
            commit.at_ms,
        ], use_bin_type=False)  # Redis's cmsgpack reads bytes as the old raw type
        args = [epoch, commit.clock_ms, k.shard(partition), payload, commit.token or "", *commit.expect]
        keys = [k.meta(partition), k.due(partition), k.open(partition), k.outbox(partition),
                k.index(partition), k.history(partition), k.states(partition)]
        try:
            applied = await self._commit(keys=keys, args=args)
        except ResponseError as exc:
            if "FENCED" in str(exc):
                raise FencedError(
                    f"partition {partition}: another worker took it over ({exc}); "
                    "this worker's writes for it are refused"
                ) from None
            if "STALE" in str(exc):
                raise StaleStateError(
                    f"partition {partition}: Redis lost writes ({exc}); nothing written"
                ) from None
            raise
        return bool(applied)

    async def outbox(self, partition: int) -> list[bytes]:
        return list(await self.client.lrange(self.keys.outbox(partition), 0, -1))

    # -- queries ------------------------------------------------------------------
    async def partitions(self) -> list[int]:
        return sorted(int(p) for p in await self.client.smembers(self.keys.shards))

    async def _records_for(self, partition: int, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Records of open sessions given (session_id, keyid) pairs."""
        if not pairs:
            return []
        kids = [kid for _, kid in pairs]
        blobs = await self.client.hmget(self.keys.states(partition), kids)
        wanted = {sid for sid, _ in pairs}
        return [
            state.open.to_record()
            for state in await self._states(partition, kids, blobs)
            if state.open is not None and state.open.session_id in wanted
        ]

    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for partition in await self.partitions():
            if project is not None and user_id is not None:
                sids = [s.decode() for s in await self.client.smembers(self.keys.user(partition, project, user_id))]
            elif project is not None:
                sids = [s.decode() for s in await self.client.smembers(self.keys.project(partition, project))]
            elif user_id is not None:
                # a user in any project: the index entries ("<sid>\x1f<project>\x1f<user>")
                # that end with the user id (the records are checked again below)
                suffix = f"\x1f{user_id}".encode()
                entries = (await self.client.hgetall(self.keys.index(partition))).values()
                sids = [e.split(b"\x1f", 1)[0].decode() for e in entries if e.endswith(suffix)]
            else:
                sids = None
            open_key = self.keys.open(partition)
            if sids is None:
                pairs = [(s.decode(), kid.decode()) for s, kid in (await self.client.hgetall(open_key)).items()]
            else:
                kids = await self.client.hmget(open_key, sids) if sids else []
                pairs = [(s, kid.decode()) for s, kid in zip(sids, kids, strict=True) if kid is not None]
            found = await self._records_for(partition, sorted(pairs)[: max(0, limit - len(records))])
            if user_id is not None and project is None:
                found = [r for r in found if r["user_id"] == user_id]
            records.extend(found)
            if len(records) >= limit:
                break
        records.sort(key=lambda r: r["start"], reverse=True)
        return records[:limit]

    async def get_session(self, session_id: str) -> dict[str, Any] | None:
        for partition in await self.partitions():
            kid = await self.client.hget(self.keys.open(partition), session_id)
            if kid is not None:
                found = await self._records_for(partition, [(session_id, kid.decode())])
                if found:
                    return found[0]
        return None

    async def closed_sessions(
        self, since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Closed sessions from the history (latest revision each), newest end first."""
        low = "-inf" if since_ms is None else since_ms
        high = "+inf" if until_ms is None else until_ms
        records: list[dict[str, Any]] = []
        for partition in await self.partitions():
            sids = await self.client.zrevrangebyscore(
                self.keys.history(partition), high, low, start=0, num=limit
            )
            if sids:
                blobs = await self.client.mget([self.keys.history_record(partition, s.decode()) for s in sids])
                records.extend(orjson.loads(b) for b in blobs if b is not None)
        records.sort(key=lambda r: r["end"], reverse=True)
        return records[:limit]

    async def get_closed_session(self, session_id: str) -> dict[str, Any] | None:
        for partition in await self.partitions():
            blob = await self.client.get(self.keys.history_record(partition, session_id))
            if blob is not None:
                return dict(orjson.loads(blob))
        return None

    async def close(self) -> None:
        await self.client.aclose()
