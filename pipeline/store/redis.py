"""The Redis store: live session state, deadline index, offsets, fencing, outbox.

The key layout is in :mod:`pipeline.store.keys`. Each batch costs one read
round trip (a pipeline: the batch's key states plus the keys falling due) and
one commit (:meth:`RedisStore.commit`): it WATCHes the partition's ``meta``
hash, reads what the checks need in one script (:data:`READ_LUA`: epoch, token,
applied offsets, the index entries to compare), checks them here, and writes
everything the batch changed in one MULTI/EXEC, which Redis applies only if
nobody wrote ``meta`` since the WATCH (a new owner's claim does; so does every
commit). The writes are plain commands, many fields each: no script unpacks
them, so Redis spends its time storing the batch, not converting it.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.core.event import SessionKey
from pipeline.core.session import KeyState, Session
from pipeline.exceptions import FencedError, RedisUnavailable, StaleStateError
from pipeline.store import codec
from pipeline.store.base import Claim, Commit, latest
from pipeline.store.keys import (
    Keys,
    index_entry,
    keyid,
    parse_index_entry,
    parse_keyid,
    parse_who_member,
    session_ref,
    session_ref_pattern,
    who_member,
    who_prefix,
    who_range,
)

# KEYS: meta, idx, hist. ARGV: number of topics, the topics, number of keyids, the keyids,
# the history's oldest end kept (ms, exclusive), its bound, the refs the commit adds to it.
# Reads only (the commit WATCHes meta before): {meta's epoch, token and applied offset of
# each topic; the keyids' index entries; the history's size once the new refs are in, and
# its oldest members with their ends, as many as the commit may have to forget (ended
# before the oldest kept, or past the bound; at most 1000 a commit)}.
READ_LUA = """
local meta, idx, hist = KEYS[1], KEYS[2], KEYS[3]
local fields, at = {'epoch', 'token'}, 2
for x = at, at + tonumber(ARGV[1]) - 1 do fields[#fields + 1] = 'off:' .. ARGV[x] end
at = at + tonumber(ARGV[1])
local held = redis.call('HMGET', meta, unpack(fields))
local n, olds = tonumber(ARGV[at]), {}
for y = at + 1, at + n, 500 do
  local got = redis.call('HMGET', idx, unpack(ARGV, y, math.min(y + 499, at + n)))
  for z = 1, #got do olds[#olds + 1] = got[z] end
end
at = at + n + 1
local size = redis.call('ZCARD', hist)
for x = at + 2, #ARGV do
  if not redis.call('ZSCORE', hist, ARGV[x]) then size = size + 1 end
end
local old = redis.call('ZCOUNT', hist, '-inf', '(' .. ARGV[at])
local count = math.min(1000, math.max(old, size - tonumber(ARGV[at + 1])))
local oldest = {}
if count > 0 then oldest = redis.call('ZRANGE', hist, 0, count - 1, 'WITHSCORES') end
return {held, olds, size, oldest}
"""

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

#: fields (or members) per write command of a commit
WRITE_CHUNK = 1000

#: times a commit starts again when ``meta`` changed between its WATCH and its EXEC
#: (a claim in between: the next attempt finds the new epoch and is fenced)
WATCH_ATTEMPTS = 3


def log_chunk(items: list[bytes]) -> bytes:
    """One batch's log items of a session (each one JSON value, as orjson writes it: no
    raw newline) as JSON lines, the unit the store appends."""
    return b"\n".join(items)


def split_log(chunks: list[bytes]) -> list[bytes]:
    """The log items of a session's chunks, in order."""
    return b"\n".join(chunks).split(b"\n") if chunks else []


def _index_of(state: KeyState | None) -> str:
    """What the query indexes hold for a key: its open session, project and user."""
    if state is None or state.open is None:
        return ""
    s = state.open
    return index_entry(s.session_id, s.project, s.user_id)


def _index_changes(
    keyed: list[tuple[str, KeyState | None]], indexed: dict[str, str]
) -> tuple[list[str], list[str], dict[str, Session]]:
    """The keys whose index entry may differ from what ``indexed`` says Redis holds
    (updated in place to the new entries), their new entries ("" = none), and the open
    session of each that has one."""
    checked: list[str] = []
    entries: list[str] = []
    opened: dict[str, Session] = {}
    for kid, state in keyed:
        if state is None:
            if indexed.pop(kid, None) != "":
                checked.append(kid)
                entries.append("")
            continue
        entry = _index_of(state)
        if indexed.get(kid) != entry:
            checked.append(kid)
            entries.append(entry)
            indexed[kid] = entry
            if state.open is not None:
                opened[kid] = state.open
    return checked, entries, opened


def _due_holds(written: int, due: int, clock_ms: int) -> bool:
    """Whether the deadline Redis holds (``written``) may stay for a key now due at
    ``due``: not after it (an early one only costs a look at the key when it comes),
    still ahead of the stream clock, and at least half way from the clock to ``due``.
    A key active every few seconds has its deadline rewritten once per half its
    inactivity timeout instead of with every event."""
    return clock_ms < written <= due and 2 * (written - clock_ms) >= due - clock_ms


def _history_forgets(
    oldest: list[bytes], size: int, refs: list[str], ends: list[int], min_ms: int, bound: int
) -> list[str]:
    """The history refs a commit forgets: of the history's oldest members (``oldest``:
    member, end, ...) and the refs it adds (with their ends), lowest end first, those that
    ended before ``min_ms`` and those past ``bound`` entries (``size``: the entries once
    the new refs are in), at most 1000."""
    ending = {oldest[i].decode(): float(oldest[i + 1]) for i in range(0, len(oldest), 2)}
    ending.update(zip(refs, ends, strict=True))
    forget: list[str] = []
    for ref, end in sorted(ending.items(), key=lambda item: (item[1], item[0])):
        if len(forget) == 1000 or (end >= min_ms and size - len(forget) <= bound):
            break
        forget.append(ref)
    return forget


def _chunked(command: Any, key: str | None, members: list[Any]) -> None:
    """``command(key, *members)`` (without ``key``: ``command(*members)``), WRITE_CHUNK
    members a command."""
    lead = () if key is None else (key,)
    for start in range(0, len(members), WRITE_CHUNK):
        command(*lead, *members[start:start + WRITE_CHUNK])


def _chunked_items(pipe: Any, key: str, items: list[Any]) -> None:
    """HSET ``key`` from a flat ``[field, value, ...]`` list, WRITE_CHUNK fields a command."""
    for start in range(0, len(items), 2 * WRITE_CHUNK):
        pipe.hset(key, items=items[start:start + 2 * WRITE_CHUNK])


def _chunked_scores(pipe: Any, key: str, scores: Mapping[str, float]) -> None:
    """ZADD ``key`` the ``{member: score}`` of ``scores``, WRITE_CHUNK members a command."""
    for start in range(0, len(scores), WRITE_CHUNK):
        pipe.zadd(key, dict(itertools.islice(scores.items(), start, start + WRITE_CHUNK)))


@dataclass(slots=True)
class _Writes:
    """What a commit writes whatever the read before it finds (see :meth:`RedisStore.commit`)."""

    logs: list[Any] = field(default_factory=list)  # [field, chunk, ...] of the log hash
    heads: list[Any] = field(default_factory=list)  # [keyid, head, ...] of the states hash
    gone: list[str] = field(default_factory=list)  # keyids whose state goes
    dropped_fields: list[str] = field(default_factory=list)  # log chunks of sessions past the grace
    dropped_keys: list[str] = field(default_factory=list)  # their event lists (the older layout)
    keyed: list[tuple[str, KeyState | None]] = field(default_factory=list)  # keyid, state
    checked: list[str] = field(default_factory=list)  # keyids whose index entry may have changed...
    entries: list[str] = field(default_factory=list)  # ...and their new entries ("" = none)
    opened: dict[str, Session] = field(default_factory=dict)  # checked keyid -> its open session
    deadlines: list[tuple[str, int | None]] = field(default_factory=list)  # keyid, deadline


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
        # per partition: the token of the last commit that applied, and what it left for
        # each key it wrote: the index entry (idx) and the deadline (due). While Redis
        # holds that token nothing else wrote there since (every commit writes its own
        # token; a token names one commit, a new owner has its own): keys whose entry is
        # unchanged are left out of the index checks, and deadlines are written only when
        # the one Redis holds is too early by more than half (see :func:`_due_holds`)
        self.index_memory = index_memory
        self._indexed: dict[int, tuple[str, dict[str, str]]] = {}
        self._dues: dict[int, dict[str, int]] = {}
        # per partition: the epoch and the number of event logs begun under it
        self._logs_begun: dict[int, tuple[int, int]] = {}
        # decode_responses=False: every reply is bytes (typed loosely by redis-py)
        self.client: Any = client
        self.keys = Keys(prefix)
        self._claim = client.register_script(CLAIM_LUA)
        self._raise = client.register_script(RAISE_LUA)
        self._read_sha = hashlib.sha1(READ_LUA.encode()).hexdigest()

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
        self.release(partition)
        epoch, flat = await self._claim(keys=[self.keys.meta(partition)], args=[])
        # the list of partitions with state, for queries: its own slot, so not in the script
        await self.client.sadd(self.keys.shards, partition)
        fields = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        if "who" not in fields:
            await self._move_index(partition, int(epoch))
        offsets = {k[4:]: int(v) for k, v in fields.items() if k.startswith("off:")}
        return Claim(partition, int(epoch), offsets, int(fields.get("clock_ms", 0)),
                     fields.get("token", ""), int(fields.get("clock_at_ms", 0)))

    async def _move_index(self, partition: int, epoch: int) -> None:
        """Move the partition's open-session index from the sets earlier versions kept
        (one per project, one per user) into the ``who`` zset, and mark ``meta`` with
        ``who``: once, by the claim that finds it without. The sets hold the sessions the
        ``idx`` hash names, so they are rebuilt from it. Under a WATCH of ``meta``: a
        claim in between makes this one stale (the newer owner moves it)."""
        k = self.keys
        meta = k.meta(partition)
        for _ in range(WATCH_ATTEMPTS):
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    await pipe.watch(meta)
                    held_epoch, done = await pipe.hmget(meta, ["epoch", "who"])
                    if done is not None or int(held_epoch or 0) != epoch:
                        return
                    members: dict[str, int] = {}
                    legacy: set[str] = set()
                    for entry in await pipe.hvals(k.index(partition)):
                        sid, project, user = parse_index_entry(entry)
                        members[who_member(sid, project, user)] = 0
                        legacy.add(k.legacy_project(partition, project))
                        if user:
                            legacy.add(k.legacy_user(partition, project, user))
                    pipe.multi()
                    _chunked_scores(pipe, k.who(partition), members)
                    _chunked(pipe.delete, None, sorted(legacy))
                    pipe.hset(meta, "who", 1)
                    await pipe.execute()
                    return
            except WatchError:
                continue
        raise RedisConnectionError(
            f"partition {partition}: its meta hash changed under {WATCH_ATTEMPTS} attempts to "
            "move its index"
        )

    def release(self, partition: int) -> None:
        """Forget what the partition's last commit left (index entries, deadlines)."""
        self._indexed.pop(partition, None)
        self._dues.pop(partition, None)
        self._logs_begun.pop(partition, None)

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
            # their own slot: not part of a partition's commit
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
        """Key states from their heads plus their sessions' event logs (one round trip).

        A head names each session's log (its handle and number of chunks in the
        partition's log hash; :func:`codec.key_state_from_head`). A head without them was
        written before the log hash: its
        sessions' logs are lists of their own (``keys.legacy_events``), read as they are
        and moved into the log hash by the next commit that writes the key."""
        k = self.keys
        states: list[KeyState] = []
        fields: list[str] = []
        hashed: list[tuple[Session, int]] = []  # a session and its number of chunks
        listed: list[tuple[Session, str]] = []  # a session and its list (older layout)
        for kid, blob in zip(kids, blobs, strict=True):
            if blob is None:
                continue
            state, refs = codec.key_state_from_head(orjson.loads(blob), parse_keyid(kid))
            states.append(state)
            if refs is None:
                listed += [(s, k.legacy_events(partition, kid, s.session_id)) for s in state.sessions()]
                continue
            for session, ref in zip(state.sessions(), refs, strict=True):
                handle, chunks = ref
                session.stored = ref
                fields += [f"{handle}.{n:x}" for n in range(chunks)]
                hashed.append((session, chunks))
        if not fields and not listed:
            return states
        pipe = self.client.pipeline(transaction=False)
        log_key = k.log(partition)
        for start in range(0, len(fields), LOAD_ALL_CHUNK):
            pipe.hmget(log_key, fields[start:start + LOAD_ALL_CHUNK])
        for _, legacy in listed:
            pipe.lrange(legacy, 0, -1)
        replies = await pipe.execute()
        loads = orjson.loads
        chunks_found: list[bytes | None] = []
        for _ in range(0, len(fields), LOAD_ALL_CHUNK):
            chunks_found += replies.pop(0)
        at = 0
        for session, count in hashed:
            found = [c for c in chunks_found[at:at + count] if c is not None]
            at += count
            session.replay_log([loads(item) for item in split_log(found)])
        for (session, _), chunks in zip(listed, replies, strict=True):
            session.replay_log([loads(item) for item in split_log(chunks)])
            session.stored = [None, 0, chunks]  # moved into the log hash by the next commit
        return states

    async def has_due(self, partition: int, until_ms: int) -> bool:
        return bool(await self.client.zcount(self.keys.due(partition), "-inf", until_ms))

    # -- the commit --------------------------------------------------------------------
    async def commit(self, partition: int, epoch: int, commit: Commit) -> bool:
        """Apply ``commit``: WATCH ``meta``, read and check, then MULTI/EXEC the writes.

        The query indexes change only where a key's entry (its open session and user)
        does, and finding out costs Redis a read of the key's entry. So the store keeps,
        per partition, the entries its last applied commit left and that commit's token:
        while Redis holds that token nothing else wrote there since, and the keys whose
        entry is unchanged are left out of the read. Redis holding another token, every
        key's entry is read. The same memory spares most deadline writes: a key's
        deadline moves with each of its events, and the one Redis holds is rewritten
        only once it is early by more than half the time left (:func:`_due_holds`; an
        early deadline costs one look at the key, never a late close). A commit that
        raises or was applied already keeps nothing.
        """
        kept = self._indexed.pop(partition, None)
        known_dues = self._dues.pop(partition, None)
        since: str = ""
        indexed: dict[str, str] = {}
        if kept is not None and commit.token:
            since, indexed = kept
        if not since:
            known_dues = None
        writes = self._gather(partition, epoch, commit, indexed)
        for attempt in range(WATCH_ATTEMPTS):
            try:
                applied, indexed, known_dues = await self._watched(
                    partition, epoch, commit, writes, since, indexed, dict(known_dues or {}))
                break
            except WatchError:
                if attempt + 1 == WATCH_ATTEMPTS:
                    raise RedisConnectionError(
                        f"partition {partition}: its meta hash changed under {WATCH_ATTEMPTS} "
                        "commits in a row (or the connection broke while it was watched)"
                    ) from None
        if applied and commit.token and known_dues is not None:
            self._keep(partition, commit.token, indexed, known_dues)
        return applied

    def _gather(
        self, partition: int, epoch: int, commit: Commit, indexed: dict[str, str]
    ) -> _Writes:
        """The commit's key states, logs and index candidates, as the writes will carry
        them; the deadlines and index entries to write are decided after the read."""
        k = self.keys
        w = _Writes()
        logs, heads, gone = w.logs, w.heads, w.gone
        dumps = orjson.dumps
        begun_epoch, begun = self._logs_begun.get(partition, (epoch, 0))
        if begun_epoch != epoch:
            begun = 0
        due_ms, deadlines = commit.due_ms, w.deadlines
        for key, state in commit.states.items():
            kid = keyid(key)
            w.keyed.append((kid, state))
            deadlines.append((kid, due_ms.get(key)))
            if state is None:
                gone.append(kid)
                continue
            refs = []
            for session in state.sessions():
                ref = session.stored
                items = session.take_log()
                if ref is None or ref[0] is None:  # a new session (or one in a list of its own)
                    # unique while this epoch lasts: one writer per epoch
                    handle = f"{epoch:x}.{begun:x}"
                    begun += 1
                    chunks = 0
                    if ref is not None:  # its list becomes the first chunk
                        if ref[2]:
                            logs += (f"{handle}.0", log_chunk(ref[2]))
                            chunks = 1
                        w.dropped_keys.append(k.legacy_events(partition, kid, session.session_id))
                    elif not items:
                        # not begun since the load, yet not from this store either (a copy):
                        # its whole log, so that none of it is lost
                        items = session.full_log()
                    ref = session.stored = [handle, chunks]
                if items:
                    logs += (f"{ref[0]}.{ref[1]:x}", log_chunk(list(map(dumps, items))))
                    ref[1] += 1
                refs.append(ref)
            heads += (kid, codec.row_head(state, refs))
        w.checked, w.entries, w.opened = _index_changes(w.keyed, indexed)
        self._logs_begun[partition] = (epoch, begun)
        for key, due in due_ms.items():
            if key not in commit.states:  # a deadline alone
                deadlines.append((keyid(key), due))
        for key, session in commit.dropped:
            ref = session.stored
            if ref is None:
                continue
            if ref[0] is None:
                w.dropped_keys.append(k.legacy_events(partition, keyid(key), session.session_id))
            else:
                w.dropped_fields += [f"{ref[0]}.{n:x}" for n in range(ref[1])]
        return w

    async def _read(
        self, pipe: Any, partition: int, topics: list[str], checked: list[str], refs: list[str],
        ends: list[int], history_min_ms: int,
    ) -> tuple[list[Any], list[Any], list[str]]:
        """Under the WATCH: ``meta``'s epoch, token and the topics' offsets, the index
        entries of ``checked``, and the history refs to forget (see :data:`READ_LUA` and
        :func:`_history_forgets`)."""
        k = self.keys
        keys = [k.meta(partition), k.index(partition), k.history(partition)]
        args = [len(topics), *topics, len(checked), *checked,
                history_min_ms, self.history_max, *refs]
        try:
            reply = await pipe.evalsha(self._read_sha, len(keys), *keys, *args)
        except NoScriptError:
            reply = await pipe.eval(READ_LUA, len(keys), *keys, *args)
        held, olds, size, oldest = reply
        return held, olds, _history_forgets(oldest, size, refs, ends, history_min_ms, self.history_max)

    async def _watched(
        self,
        partition: int,
        epoch: int,
        commit: Commit,
        w: _Writes,
        since: str,
        indexed: dict[str, str],
        known_dues: dict[str, int],
    ) -> tuple[bool, dict[str, str], dict[str, int]]:
        k = self.keys
        meta = k.meta(partition)
        topics = list(commit.offsets)
        refs = [session_ref(sid, project) for sid, project, _, _ in commit.history]
        ends = [end_ms for _, _, end_ms, _ in commit.history]
        history_min_ms = commit.clock_ms - self.history_retention_ms
        checked, entries, opened = w.checked, w.entries, w.opened
        async with self.client.pipeline(transaction=True) as pipe:
            await pipe.watch(meta)
            held, olds, forget = await self._read(pipe, partition, topics, checked, refs, ends, history_min_ms)
            stored_epoch, token = held[0], (held[1] or b"").decode()
            if stored_epoch is None or int(stored_epoch) < epoch:
                # epochs only grow: a lower one (or none) is Redis having lost the claim
                raise StaleStateError(
                    f"partition {partition}: Redis lost writes (STALE epoch "
                    f"{None if stored_epoch is None else int(stored_epoch)} < {epoch}); nothing written"
                )
            if int(stored_epoch) != epoch:
                raise FencedError(
                    f"partition {partition}: another worker took it over (FENCED epoch "
                    f"{int(stored_epoch)} ~= {epoch}); this worker's writes for it are refused"
                )
            if commit.token and token != commit.token and token not in commit.expect:
                raise StaleStateError(
                    f"partition {partition}: Redis lost writes (STALE commit token {token} is not "
                    "one this worker wrote last); nothing written"
                )
            for topic, stored in zip(topics, held[2:], strict=True):
                if stored is not None and int(stored) >= commit.offsets[topic]:
                    # applied already (this very commit, resent after its reply was lost,
                    # or the same input again): nothing written but the token
                    if commit.token and token != commit.token:
                        pipe.multi()
                        pipe.hset(meta, "token", commit.token)
                        await pipe.execute()
                    return False, {}, {}
            if since and token != since:
                # something else wrote since the commit whose entries were kept: every
                # key's entry is read, every deadline written
                indexed, known_dues = {}, {}
                checked, entries, opened = _index_changes(w.keyed, indexed)
                held, olds, forget = await self._read(pipe, partition, topics, checked, refs, ends, history_min_ms)
            pipe.multi()
            self._write(pipe, partition, commit, w, checked, entries, opened, olds, forget, refs,
                        known_dues)
            await pipe.execute()
        return True, indexed, known_dues

    def _write(
        self,
        pipe: Any,
        partition: int,
        commit: Commit,
        w: _Writes,
        checked: list[str],
        entries: list[str],
        opened: dict[str, Session],
        olds: list[bytes | None],
        forget: list[str],
        refs: list[str],
        known_dues: dict[str, int],
    ) -> None:
        """Queue the commit's writes (after MULTI)."""
        k = self.keys
        meta_fields: dict[str, Any] = {f"off:{t}": o for t, o in commit.offsets.items()}
        meta_fields["clock_ms"] = commit.clock_ms
        if commit.at_ms > 0:
            meta_fields["clock_at_ms"] = commit.at_ms
        if commit.token:
            meta_fields["token"] = commit.token
        pipe.hset(k.meta(partition), mapping=meta_fields)
        log_key, states_key, due_key = k.log(partition), k.states(partition), k.due(partition)
        _chunked(pipe.hdel, log_key, w.dropped_fields)
        for legacy in w.dropped_keys:
            pipe.delete(legacy)
        _chunked_items(pipe, log_key, w.logs)
        _chunked_items(pipe, states_key, w.heads)
        _chunked(pipe.hdel, states_key, w.gone)
        # deadlines: every key the commit names, rewritten only when the one Redis holds
        # (as this store last wrote it) is too early
        clock = commit.clock_ms
        dues: dict[str, int] = {}
        undue: list[str] = []
        for kid, due in w.deadlines:
            if due is None or due < 0:
                undue.append(kid)
                known_dues.pop(kid, None)
            else:
                written = known_dues.get(kid)
                if written is None or not _due_holds(written, due, clock):
                    dues[kid] = due
                    known_dues[kid] = due
        _chunked_scores(pipe, due_key, dues)
        _chunked(pipe.zrem, due_key, undue)
        self._write_index(pipe, partition, checked, entries, olds, opened)
        outbox = k.outbox(partition)
        if commit.acked > 0:
            pipe.ltrim(outbox, commit.acked, -1)
        _chunked(pipe.rpush, outbox, commit.outgoing)
        hist = k.history(partition)
        _chunked(pipe.zrem, hist, forget)
        _chunked(pipe.delete, None, [k.history_record(partition, ref) for ref in forget])
        forgotten = set(forget)
        added = {ref: (end_ms, record) for ref, (_, _, end_ms, record) in zip(refs, commit.history, strict=True)
                 if ref not in forgotten}
        if added:
            pipe.zadd(hist, {ref: end_ms for ref, (end_ms, _) in added.items()})
            for ref, (_, record) in added.items():
                pipe.set(k.history_record(partition, ref), record)

    def _write_index(
        self, pipe: Any, partition: int, checked: list[str], entries: list[str],
        olds: list[bytes | None], opened: dict[str, Session],
    ) -> None:
        """The query indexes, where a key's entry changed: removals first, then additions
        (a key whose session changed leaves the old one's entries, and the same ref or set
        member may be in both)."""
        k = self.keys
        open_set: dict[str, str] = {}
        open_del: list[str] = []
        idx_set: dict[str, str] = {}
        idx_del: list[str] = []
        who_add: dict[str, int] = {}
        who_del: list[str] = []
        for kid, new, old_raw in zip(checked, entries, olds, strict=True):
            old = old_raw.decode() if old_raw else ""
            if old == new:
                continue
            if old_raw:
                sid, project, user = parse_index_entry(old_raw)
                open_del.append(session_ref(sid, project))
                who_del.append(who_member(sid, project, user))
            if new:
                session = opened[kid]
                sid, project = session.session_id, session.project
                open_set[session_ref(sid, project)] = kid
                who_add[who_member(sid, project, session.user_id)] = 0
                idx_set[kid] = new
            else:
                idx_del.append(kid)
        open_key, idx_key, who_key = k.open(partition), k.index(partition), k.who(partition)
        _chunked(pipe.hdel, open_key, open_del)
        _chunked_items(pipe, open_key, [x for pair in open_set.items() for x in pair])
        _chunked(pipe.zrem, who_key, who_del)
        _chunked_scores(pipe, who_key, who_add)
        _chunked(pipe.hdel, idx_key, idx_del)
        _chunked_items(pipe, idx_key, [x for pair in idx_set.items() for x in pair])

    def _keep(
        self, partition: int, token: str, indexed: dict[str, str], dues: dict[str, int]
    ) -> None:
        """Keep the index entries and deadlines a commit left: at most ``index_memory``
        of each in all, the longest kept going first."""
        self._indexed[partition] = (token, indexed)
        self._dues[partition] = dues
        room = self.index_memory // len(self._indexed)
        if room <= 0:
            del self._indexed[partition]
            del self._dues[partition]
            return
        for kept in (indexed, dues):
            if len(kept) > room:
                for kid in list(itertools.islice(kept, len(kept) - room * 3 // 4)):
                    del kept[kid]

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
                low, high = who_range(who_prefix(project, user_id))
                members = await self.client.zrangebylex(self.keys.who(partition), low, high)
                refs = [session_ref(parse_who_member(m)[0], project) for m in members]
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
