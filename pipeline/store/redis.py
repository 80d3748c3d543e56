"""The Redis store: live session state, deadline index, offsets, fencing, outbox.

The key layout is in :mod:`pipeline.store.keys`. Each batch costs one read
round trip (a pipeline: the batch's key states plus the keys falling due) and
one write round trip (the commit script, ``commit.lua`` beside this module, atomic: it checks the epoch
and the applied offsets, then writes states, deadlines, indexes, outbox and
offsets together, or nothing; a second one only when the index entries the
store kept from its last commit turn out not to be Redis's, see
:meth:`RedisStore.commit`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.core.event import SessionKey
from pipeline.core.session import KeyState
from pipeline.exceptions import FencedError, RedisUnavailable, StaleStateError
from pipeline.store import codec
from pipeline.store.base import Claim, Commit, latest
from pipeline.store.keys import (
    Keys,
    index_entry,
    keyid,
    parse_index_entry,
    session_ref,
    session_ref_pattern,
)
from pipeline.store.payload import CommitPayload, log_chunk, split_log

#: the commit script (package data beside this module): checks the epoch, the token and
#: the applied offsets, then writes a :class:`CommitPayload` or nothing
COMMIT_LUA = (resources.files("pipeline.store") / "commit.lua").read_text(encoding="utf-8")

# KEYS: revisions hash, their times (zset); ARGV: cutoff ms, now ms, then field, revision, ...:
# each revision kept if higher, its time set to now; up to 100 entries older than the cutoff go
RAISE_LUA = """
for i = 3, #ARGV, 2 do
  local held = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > held then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[i])
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, 100)
if #old > 0 then
  redis.call('HDEL', KEYS[1], unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return #old
"""

# KEYS: meta (one slot: safe on Redis Cluster)
CLAIM_LUA = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return {epoch, redis.call('HGETALL', KEYS[1])}
"""


#: keys per HSCAN page and per pipeline of event logs in ``load_all``
LOAD_ALL_CHUNK = 1000


class _Recheck(Exception):
    """The commit script's RECHECK: the index entries the store kept are not Redis's."""


def _index_of(state: KeyState | None) -> str:
    """What the query indexes hold for a key: its open session, project and user."""
    if state is None or state.open is None:
        return ""
    s = state.open
    return index_entry(s.session_id, s.project, s.user_id)


class RedisStore:
    """:class:`~pipeline.store.base.SessionStore` on Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "sz",
        *,
        history_retention_ms: int = 86_400_000,
        revision_retention_ms: int = 30 * 86_400_000,
        history_max: int = 50_000,
        index_memory: int = 100_000,
    ) -> None:
        self.history_retention_ms = history_retention_ms
        self.revision_retention_ms = revision_retention_ms
        self.history_max = history_max
        # per partition: the token of the last commit that applied, and the index entry
        # (idx) it left for each key it wrote: a commit whose token Redis still holds
        # leaves the keys whose entry is unchanged out of the index checks
        self.index_memory = index_memory
        self._indexed: dict[int, tuple[str, dict[str, str]]] = {}
        # decode_responses=False: every reply is bytes (typed loosely by redis-py)
        self.client: Any = client
        self.keys = Keys(prefix)
        self._commit = client.register_script(COMMIT_LUA)
        self._claim = client.register_script(CLAIM_LUA)
        self._raise = client.register_script(RAISE_LUA)

    @classmethod
    def from_url(cls, url: str, prefix: str = "sz", **options: int) -> RedisStore:
        """A store on ``url`` with the other Redis settings from the environment."""
        from pipeline.config import load_settings
        from pipeline.store.connection import redis_client

        return cls(redis_client(load_settings(redis_url=url)), prefix, **options)

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise RedisUnavailable(
                f"cannot reach Redis ({exc}); check SESSIONIZER_REDIS_URL and that Redis is running"
            ) from None

    async def claim(self, partition: int) -> Claim:
        self._indexed.pop(partition, None)
        epoch, flat = await self._claim(keys=[self.keys.meta(partition)], args=[])
        # the list of partitions with state, for queries: its own slot, so not in the script
        await self.client.sadd(self.keys.shards, partition)
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        offsets = {k[4:]: int(v) for k, v in fields.items() if k.startswith("off:")}
        return Claim(partition, int(epoch), offsets, int(fields.get("clock_ms", 0)),
                     fields.get("token", ""), int(fields.get("clock_at_ms", 0)))

    def release(self, partition: int) -> None:
        """Forget the partition's index entries kept from its last commit."""
        self._indexed.pop(partition, None)

    async def revisions(self, refs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], int]:
        wanted = list(refs)
        if not wanted:
            return {}
        found = await self.client.hmget(self.keys.revisions, [session_ref(s, p) for s, p in wanted])
        return {ref: int(value) for ref, value in zip(wanted, found, strict=True) if value is not None}

    async def raise_revisions(self, marks: Mapping[tuple[str, str], int], now_ms: int) -> None:
        if marks:
            args: list[Any] = [now_ms - self.revision_retention_ms, now_ms]
            for (sid, project), revision in marks.items():
                args += [session_ref(sid, project), revision]
            # their own slot: not part of a partition's commit script
            await self._raise(keys=[self.keys.revisions, self.keys.revisions_at], args=args)

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

    async def load_all(self, partition: int, limit: int) -> list[KeyState] | None:
        states_key = self.keys.states(partition)
        if await self.client.hlen(states_key) > limit:
            return None
        blobs: dict[str, bytes] = {}  # a key HSCAN gives twice (a rehash meanwhile) counts once
        async for kid, blob in self.client.hscan_iter(states_key, count=LOAD_ALL_CHUNK):
            blobs[kid.decode()] = blob
        if len(blobs) > limit:
            return None
        kids = list(blobs)
        loaded: list[KeyState] = []
        for start in range(0, len(kids), LOAD_ALL_CHUNK):  # one pipeline of event logs each
            chunk = kids[start:start + LOAD_ALL_CHUNK]
            loaded += await self._states(partition, chunk, [blobs[kid] for kid in chunk])
        return loaded

    async def _states(
        self, partition: int, kids: list[str], blobs: list[bytes | None]
    ) -> list[KeyState]:
        """Key states from their blobs plus their sessions' event logs (one round trip)."""
        states = [
            (kid, codec.decode(blob))
            for kid, blob in zip(kids, blobs, strict=True)
            if blob is not None
        ]
        sessions = [(kid, s) for kid, state in states for s in state.sessions()]
        if sessions:
            pipe = self.client.pipeline(transaction=False)
            for kid, session in sessions:
                pipe.lrange(self.keys.events(partition, kid, session.session_id), 0, -1)
            loads = orjson.loads
            for (_, session), chunks in zip(sessions, await pipe.execute(), strict=True):
                session.replay_log([loads(item) for item in split_log(chunks)])
        return [state for _, state in states]

    async def has_due(self, partition: int, until_ms: int) -> bool:
        return bool(await self.client.zcount(self.keys.due(partition), "-inf", until_ms))

    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        """Apply ``commit`` with the ``COMMIT`` script.

        The query indexes change only where a key's entry (its open session and user)
        does, and finding out costs Redis a read of the key's entry. So the store keeps,
        per partition, the entries its last applied commit left and that commit's token:
        while Redis holds that token nothing else wrote there since (every commit writes
        its own token; a token names one commit, a new owner has its own), and the keys
        whose entry is unchanged are left out of the checks. Redis holding another token,
        the script refuses before writing anything, and the commit goes again with every
        key checked. A commit that raises or was applied already keeps nothing.
        """
        k = self.keys
        dumps = orjson.dumps
        due_ms = commit.due_ms
        # taken out while the commit is under way: back (with its entries) once applied;
        # none for a commit without a token (the next one could not tell)
        kept = self._indexed.pop(partition, None)
        since, indexed = kept if kept is not None and commit.token else ("", {})
        payload = CommitPayload(
            since=since, outgoing=commit.outgoing, acked=commit.acked,
            history_min_ms=commit.clock_ms - self.history_retention_ms,
            history_max=self.history_max, at_ms=commit.at_ms,
        )
        logs, heads, gone = payload.logs, payload.states, payload.gone
        dues, undue, checked, entries = payload.dues, payload.undue, payload.checked, payload.entries
        for key, state in commit.states.items():
            kid = keyid(key)
            if state is None:
                gone.append(kid)
                if indexed.pop(kid, None) != "":
                    checked.append(kid)
                    entries.append("")
            else:
                entry = _index_of(state)
                for session in state.sessions():
                    items = session.take_log()
                    if items:
                        logs += (k.events(partition, kid, session.session_id),
                                 log_chunk(list(map(dumps, items))))
                heads += (kid, codec.head_json(state))
                if indexed.get(kid) != entry:
                    checked.append(kid)
                    entries.append(entry)
                    indexed[kid] = entry
            due = due_ms.get(key)
            if due is None or due < 0:
                undue.append(kid)
            else:
                dues += (str(due), kid)  # a string: Lua formats a number slowly
        for topic, offset in commit.offsets.items():
            payload.offsets += (topic, offset)
        payload.dropped = [k.events(partition, keyid(key), sid) for key, sid in commit.dropped]
        for sid, project, end_ms, record in commit.history:
            payload.history += (session_ref(sid, project), end_ms, record)
        keys = [k.meta(partition), k.due(partition), k.open(partition), k.outbox(partition),
                k.index(partition), k.history(partition), k.states(partition)]
        args = [epoch, commit.clock_ms, k.shard(partition), b"", commit.token or "", *commit.expect]
        try:
            applied = await self._run_commit(partition, keys, args, payload)
        except _Recheck:  # nothing written: again, every key's entry checked
            indexed = {}
            checked.clear()
            entries.clear()
            for key, state in commit.states.items():
                kid, entry = keyid(key), _index_of(state)
                checked.append(kid)
                entries.append(entry)
                if state is not None:
                    indexed[kid] = entry
            payload.since = ""
            applied = await self._run_commit(partition, keys, args, payload)
        if applied and commit.token:
            self._keep_indexed(partition, commit.token, indexed)
        return bool(applied)

    async def _run_commit(
        self, partition: int, keys: list[str], args: list[Any], payload: CommitPayload
    ) -> Any:
        args[3] = payload.pack()
        try:
            return await self._commit(keys=keys, args=args)
        except ResponseError as exc:
            if str(exc).startswith("RECHECK"):
                raise _Recheck() from None
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

    def _keep_indexed(self, partition: int, token: str, indexed: dict[str, str]) -> None:
        """Keep the index entries a commit left: at most ``index_memory`` in all, the
        longest kept going first."""
        self._indexed[partition] = (token, indexed)
        room = self.index_memory // len(self._indexed)
        if room <= 0:
            del self._indexed[partition]
        elif len(indexed) > room:
            for kid in list(itertools.islice(indexed, len(indexed) - room * 3 // 4)):
                del indexed[kid]

    async def outbox(self, partition: int) -> list[bytes]:
        return list(await self.client.lrange(self.keys.outbox(partition), 0, -1))

    # -- queries ------------------------------------------------------------------
    async def partitions(self) -> list[int]:
        return sorted(int(p) for p in await self.client.smembers(self.keys.shards))

    async def _records_for(self, partition: int, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Records of open sessions given (ref, keyid) pairs (a ref: ``keys.session_ref``)."""
        if not pairs:
            return []
        kids = [kid for _, kid in pairs]
        blobs = await self.client.hmget(self.keys.states(partition), kids)
        wanted = {ref for ref, _ in pairs}
        return [
            state.open.to_record()
            for state in await self._states(partition, kids, blobs)
            if state.open is not None
            and session_ref(state.open.session_id, state.open.project) in wanted
        ]

    async def open_sessions(
        self, project: str | None = None, user_id: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for partition in await self.partitions():
            open_key = self.keys.open(partition)
            pairs: list[tuple[str, str]]
            if project is not None:
                members = self.keys.user(partition, project, user_id) if user_id is not None \
                    else self.keys.project(partition, project)
                refs = [session_ref(s.decode(), project) for s in await self.client.smembers(members)]
                kids = await self.client.hmget(open_key, refs) if refs else []
                pairs = [(ref, kid.decode()) for ref, kid in zip(refs, kids, strict=True) if kid is not None]
            elif user_id is not None:
                # a user in any project: the index entries (keys.index_entry) that end
                # with the user id and name it (the records are checked again below)
                suffix = user_id.encode()
                pairs = []
                for kid, entry in (await self.client.hgetall(self.keys.index(partition))).items():
                    if entry.endswith(suffix):
                        sid, found_project, found_user = parse_index_entry(entry)
                        if found_user == user_id:
                            pairs.append((session_ref(sid, found_project), kid.decode()))
            else:
                pairs = [(ref.decode(), kid.decode()) for ref, kid in (await self.client.hgetall(open_key)).items()]
            found = await self._records_for(partition, sorted(pairs)[: max(0, limit - len(records))])
            if user_id is not None and project is None:
                found = [r for r in found if r["user_id"] == user_id]
            records.extend(found)
            if len(records) >= limit:
                break
        records.sort(key=lambda r: r["start"], reverse=True)
        return records[:limit]

    async def get_session(self, session_id: str, project: str | None = None) -> dict[str, Any] | None:
        """The open session with this id (in ``project``; without one, in any project: the
        latest started when several projects use the id)."""
        found: list[dict[str, Any]] = []
        for partition in await self.partitions():
            open_key = self.keys.open(partition)
            if project is not None:
                ref = session_ref(session_id, project)
                kid = await self.client.hget(open_key, ref)
                pairs = [] if kid is None else [(ref, kid.decode())]
            else:
                scan = self.client.hscan_iter(open_key, match=session_ref_pattern(session_id), count=1000)
                pairs = [(ref.decode(), kid.decode()) async for ref, kid in scan]
            found += [r for r in await self._records_for(partition, pairs) if r["session_id"] == session_id]
        return latest(found, "start")

    async def closed_sessions(
        self, since_ms: int | None = None, until_ms: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Closed sessions from the history (latest revision each), newest end first."""
        low = "-inf" if since_ms is None else since_ms
        high = "+inf" if until_ms is None else until_ms
        records: list[dict[str, Any]] = []
        for partition in await self.partitions():
            refs = await self.client.zrevrangebyscore(
                self.keys.history(partition), high, low, start=0, num=limit
            )
            if refs:
                blobs = await self.client.mget([self.keys.history_record(partition, r.decode()) for r in refs])
                records.extend(orjson.loads(b) for b in blobs if b is not None)
        records.sort(key=lambda r: r["end"], reverse=True)
        return records[:limit]

    async def get_closed_session(
        self, session_id: str, project: str | None = None
    ) -> dict[str, Any] | None:
        """The closed session with this id from the history (in ``project``; without one,
        in any project: the latest ended when several projects use the id)."""
        found: list[dict[str, Any]] = []
        for partition in await self.partitions():
            if project is not None:
                refs = [session_ref(session_id, project)]
            else:
                scan = self.client.zscan_iter(
                    self.keys.history(partition), match=session_ref_pattern(session_id), count=1000
                )
                refs = [ref.decode() async for ref, _ in scan]
            if refs:
                blobs = await self.client.mget([self.keys.history_record(partition, r) for r in refs])
                found += [r for r in map(orjson.loads, filter(None, blobs)) if r["session_id"] == session_id]
        return latest(found, "end")

    async def close(self) -> None:
        await self.client.aclose()
