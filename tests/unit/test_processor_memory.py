"""The partition processor, driven by hand: fake records in, messages out, a wall clock
the test advances. Store: :class:`MemoryStore`; sink: a list.

The scenarios are written against a *world* (where state lives) so that
``tests/integration/test_processor.py`` runs the same ones on a real Redis; this
module runs them on the in-memory twin. A "crash" is a new processor built from a
new claim on the same world (for Redis: a new client on the same keys).
"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pytest

from pipeline.core.rules import SessionRules
from pipeline.exceptions import FencedError
from pipeline.store.memory import MemoryStore
from pipeline.worker.outbox import DEAD_LETTER, FORWARD, ORIGIN_HEADER, SESSION, Outgoing
from pipeline.worker.processor import PartitionProcessor, Topics
from pipeline.worker.routing import Router

T0 = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
SEC = 1000
MIN = 60 * SEC
TIMEOUT_MS = 5 * MIN

RULES = SessionRules(
    inactivity_timeout_ms=TIMEOUT_MS,
    reopen_grace_ms=15 * MIN,
    max_session_duration_ms=60 * MIN,
    max_event_bytes=1024,
)
TOPICS = Topics(events="events", repartition="repartition", dlq="events-dlq", sessions="sessions")


def users_on(partition: int, partitions: int = 2, count: int = 3) -> list[str]:
    """User ids whose routing key hashes to ``partition`` of ``partitions``."""
    router = Router(partitions)
    found = [u for u in (f"user-{i}" for i in range(100)) if router.partition_of(u) == partition]
    return found[:count]


# -- fakes ------------------------------------------------------------------------


@dataclass
class Rec:
    """A Kafka record as the processor sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Wall:
    """A wall clock (seconds, like time.time) that moves only when told."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000

    def advance(self, ms: int) -> None:
        self.ms += ms


class ListSink:
    """Collects what is sent; raises ``fail`` instead when it is set."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []
        self.fail: Exception | None = None

    async def send(self, messages: Sequence[Outgoing]) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.extend(messages)

    def of(self, kind: str) -> list[Outgoing]:
        return [m for m in self.sent if m.kind == kind]

    def sessions(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.of(SESSION)]

    def dead_letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.of(DEAD_LETTER)]


class World(Protocol):
    """Where the state lives: store handles on it, and a snapshot of all of it."""

    def open_store(self) -> Any: ...

    async def snapshot(self) -> Any: ...

    async def close(self) -> None: ...


class MemoryWorld:
    def __init__(self) -> None:
        self.store = MemoryStore()

    def open_store(self) -> MemoryStore:
        return self.store

    async def snapshot(self) -> Any:
        """Everything but the fencing epochs (a new claim bumps them)."""
        shards = copy.deepcopy(self.store.shards)
        for shard in shards.values():
            shard.epoch = 0
        return shards

    async def close(self) -> None:
        pass


class Env:
    """One scenario: a world, a sink, a wall clock, and the input log it writes."""

    def __init__(self, world: World, partitions: int = 1, rules: SessionRules = RULES) -> None:
        self.world = world
        self.rules = rules
        self.router = Router(partitions)
        self.sink = ListSink()
        self.wall = Wall(T0)
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)

    async def processor(
        self, partition: int = 0, *, store: Any = None, sink: Any = None, warm: bool = False,
        cache_keys: int = 100_000,
    ) -> PartitionProcessor:
        """A processor from a fresh claim (the previous owner, if any, is fenced out);
        ``warm``: handed every key state after the claim, as the worker does."""
        store = store if store is not None else self.world.open_store()
        claim = await store.claim(partition)
        proc = PartitionProcessor(
            claim, rules=self.rules, store=store, sink=sink if sink is not None else self.sink,
            topics=TOPICS, router=self.router, wall=self.wall, cache_keys=cache_keys,
        )
        if warm:
            await proc.warm()
        return proc

    def record(
        self,
        value: bytes | None,
        *,
        arrival: int = 0,
        partition: int = 0,
        topic: str = TOPICS.events,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Rec:
        """The next record of ``topic``/``partition``, stamped ``T0 + arrival``."""
        offset = self._offsets[(topic, partition)]
        self._offsets[(topic, partition)] += 1
        return Rec(topic, partition, offset, key, value, T0 + arrival, list(headers))

    def event(
        self,
        type: str = "usage",
        user: str = "alice",
        at: int = 0,
        *,
        arrival: int | None = None,
        partition: int = 0,
        **fields: Any,
    ) -> Rec:
        """A record holding one event at ``T0 + at``, arriving then unless told."""
        body = {"type": type, "timestamp": T0 + at, "user_id": user, **fields}
        return self.record(
            orjson.dumps(body), arrival=at if arrival is None else arrival,
            partition=partition, key=user.encode(),
        )

    def forwarded(self, message: Outgoing, partition: int) -> Rec:
        """The repartition-topic record a FORWARD message becomes."""
        assert message.kind == FORWARD and message.partition == partition
        assert message.origin is not None
        return self.record(
            message.value, arrival=message.timestamp_ms - T0, partition=partition,
            topic=TOPICS.repartition, key=message.key,
            headers=[(ORIGIN_HEADER, message.origin.encode())],
        )


class CountingStore:
    """A store that counts the reads a batch or a tick makes of it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: defaultdict[str, int] = defaultdict(int)

    async def load(self, *args: Any) -> Any:
        self.calls["load"] += 1
        return await self.store.load(*args)

    async def has_due(self, *args: Any) -> Any:
        self.calls["has_due"] += 1
        return await self.store.has_due(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def run(world: World, scenario: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        try:
            await scenario(world)
        finally:
            await world.close()

    asyncio.run(main())


SCENARIOS: list[Callable[[World], Awaitable[None]]] = []


def scenario(fn: Callable[[World], Awaitable[None]]) -> Callable[[World], Awaitable[None]]:
    SCENARIOS.append(fn)
    return fn


def wire(messages: Sequence[Outgoing]) -> list[tuple[Any, ...]]:
    """What goes to the broker of each message."""
    return [(m.kind, m.key, m.value, m.timestamp_ms, m.partition, m.origin) for m in messages]


async def outbox_of(store: Any, partition: int = 0) -> list[tuple[Any, ...]]:
    return wire([Outgoing.decode(blob) for blob in await store.outbox(partition)])


# -- sessions open and close -----------------------------------------------------------


@scenario
async def a_session_opens_and_ends(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    store = proc.store

    await proc.process([env.event("session", at=0, id="e1")])
    await proc.process([env.event("usage", at=1 * MIN, id="e2", source="search")])

    [live] = await store.open_sessions()
    assert (live["status"], live["user_id"], live["event_count"]) == ("open", "alice", 2)
    assert env.sink.sent == []

    stats = await proc.process([env.event("sessionend", at=2 * MIN, id="e3")])

    assert stats.closed == {"ended": 1}
    assert [m.kind for m in env.sink.sent] == [SESSION]
    [closed] = env.sink.sessions()
    assert env.sink.sent[0].key == closed["session_id"].encode()
    assert closed["session_id"] == live["session_id"]
    assert (closed["status"], closed["close_reason"]) == ("closed", "ended")
    assert closed["duration_ms"] == 2 * MIN
    assert [(e["id"], e["partition"], e["offset"]) for e in closed["events"]] == [
        ("e1", 0, 0), ("e2", 0, 1), ("e3", 0, 2),
    ]
    assert await store.open_sessions() == []
    assert await store.get_session(closed["session_id"]) is None
    assert proc.resume_offset(TOPICS.events) == 3


@scenario
async def two_projects_using_one_client_session_id_keep_apart(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    store = proc.store
    sid = "checkout-0001"

    await proc.process([
        env.event("session", user="ann", at=0, id="s1", session_id=sid, project="shop"),
        env.event("session", user="bob", at=MIN, id="b1", session_id=sid, project="blog"),
    ])
    assert sorted((r["project"], r["user_id"]) for r in await store.open_sessions()) == [
        ("blog", "bob"), ("shop", "ann")]

    await proc.process([env.event("sessionend", user="bob", at=2 * MIN, id="b2", session_id=sid,
                                  project="blog")])
    [ended] = env.sink.sessions()
    assert (ended["session_id"], ended["project"], ended["user_id"]) == (sid, "blog", "bob")
    [live] = await store.open_sessions()
    assert (live["project"], live["user_id"]) == ("shop", "ann")
    found = await store.get_session(sid)
    assert found is not None and found["project"] == "shop"
    assert await store.get_session(sid, "blog") is None

    await proc.process([env.event("sessionend", user="ann", at=3 * MIN, id="s2", session_id=sid,
                                  project="shop")])
    assert await store.open_sessions() == []
    for project, user in (("shop", "ann"), ("blog", "bob")):
        kept = await store.get_closed_session(sid, project)
        assert kept is not None and (kept["user_id"], kept["close_reason"]) == (user, "ended")
    assert sorted(r["project"] for r in await store.closed_sessions()) == ["blog", "shop"]


@scenario
async def idle_close_waits_for_a_caught_up_tick(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    # live: each record is read as it arrives
    await proc.process([env.event("session", at=0)])
    env.wall.advance(30 * SEC)
    await proc.process([env.event("usage", at=30 * SEC)])

    env.wall.advance(TIMEOUT_MS)  # exactly at the deadline: not yet
    await proc.tick(caught_up=True)
    assert env.sink.sent == []

    env.wall.advance(1 * SEC)
    await proc.tick(caught_up=False)  # lagging: the stream clock stays at the last arrival
    assert env.sink.sent == []
    assert len(await proc.store.open_sessions()) == 1

    await proc.tick(caught_up=True)
    [closed] = env.sink.sessions()
    assert closed["close_reason"] == "timeout"
    assert closed["end"] == "2025-11-27T10:00:30.000Z"  # last activity, not when noticed
    assert await proc.store.open_sessions() == []

    await proc.tick(caught_up=True)  # nothing more to close
    assert len(env.sink.sent) == 1


@scenario
async def while_lagging_the_stream_clock_follows_arrival_times(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)  # replaying records an hour old
    proc = await env.processor()
    await proc.process([env.event("session", user="alice", at=0)])

    await proc.tick(caught_up=False)
    env.wall.advance(10 * MIN)
    await proc.tick(caught_up=False)
    assert env.sink.sent == []  # wall time is far past the deadline; arrival time is not

    # a later record of another user moves the stream clock past alice's deadline
    await proc.process([env.event("session", user="bob", at=TIMEOUT_MS + 1)])
    [closed] = env.sink.sessions()
    assert (closed["user_id"], closed["close_reason"]) == ("alice", "timeout")
    assert [r["user_id"] for r in await proc.store.open_sessions()] == ["bob"]


# -- dead letters ----------------------------------------------------------------------


@scenario
async def bad_records_become_dead_letters_and_never_stop_the_partition(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    old = T0 - 4 * 24 * 60 * MIN
    good = {"type": "usage", "timestamp": T0, "user_id": "zed"}
    records = [
        env.record(b"{not json", key=b"k1"),
        env.record(b"\xff\xfe\x00binary", key=None),
        env.record(None, key=b"\xff\xfek3"),
        env.record(orjson.dumps({"type": "usage", "timestamp": T0}), key=b"k4"),
        env.record(orjson.dumps({"type": "", "timestamp": T0, "user_id": "u"}), key=b"k5"),
        env.record(orjson.dumps({"type": "usage", "timestamp": old, "user_id": "u"}), key=b"k6"),
        env.record(orjson.dumps({**good, "data": {"pad": "x" * 2000}}), key=b"k7"),
        env.record(orjson.dumps({"type": "sessionend", "timestamp": T0, "user_id": "nobody"}), key=b"k8"),
        env.record(orjson.dumps([good, {"type": "usage", "timestamp": T0}]), key=b"k9"),
        env.record(orjson.dumps({**good, "type": "session"}), key=b"k10"),
    ]
    stats = await proc.process(records)

    letters = env.sink.dead_letters()
    assert [(d["error"], d["offset"]) for d in letters] == [
        ("invalid_json", 0),
        ("invalid_json", 1),
        ("invalid_json", 2),
        ("no_identity", 3),
        ("invalid_event", 4),
        ("too_old", 5),
        ("too_large", 6),
        ("no_identity", 8),
        ("end_without_session", 7),  # rejected by the session rules, after parsing
    ]
    for letter in letters:
        assert isinstance(letter["detail"], str) and letter["detail"]
        assert (letter["topic"], letter["partition"], letter["timestamp"]) == ("events", 0, T0)
    by_offset = {d["offset"]: d for d in letters}
    assert by_offset[0]["key"] == "k1"
    assert by_offset[0]["value"] == "{not json"
    assert by_offset[1]["key"] is None
    assert by_offset[1]["value_encoding"] == "base64"
    assert base64.b64decode(by_offset[1]["value"]) == b"\xff\xfe\x00binary"
    assert by_offset[2]["value"] is None
    assert by_offset[2]["key_encoding"] == "base64"
    assert base64.b64decode(by_offset[2]["key"]) == b"\xff\xfek3"
    assert orjson.loads(by_offset[7]["value"]) == {"type": "sessionend", "timestamp": T0, "user_id": "nobody"}
    assert by_offset[7]["key"] == "k8"
    assert by_offset[8]["index"] == 1
    assert orjson.loads(by_offset[8]["value"]) == {"type": "usage", "timestamp": T0}  # the element alone
    assert all("index" not in d for d in letters if d["offset"] != 8)
    assert [m.key for m in env.sink.of(DEAD_LETTER)][:2] == [b"k1", None]

    # the good events around them went on
    assert stats.rejected["invalid_json"] == 3
    [live] = await proc.store.open_sessions()
    assert (live["user_id"], live["event_count"]) == ("zed", 2)
    assert proc.resume_offset(TOPICS.events) == len(records)


# -- re-routing ----------------------------------------------------------------------------


@scenario
async def an_event_for_another_partition_is_forwarded_with_its_origin(world: World) -> None:
    env = Env(world, partitions=2)
    [mine] = users_on(0, count=1)
    [theirs, other] = users_on(1, count=2)
    p0, p1 = await env.processor(0), await env.processor(1)

    start = env.event("session", user=theirs, at=0, partition=0, id="f1")
    batch = env.record(
        orjson.dumps([
            {"type": "usage", "timestamp": T0 + MIN, "user_id": mine, "id": "b0"},
            {"type": "usage", "timestamp": T0 + MIN, "user_id": theirs, "id": "b1"},
        ]),
        arrival=MIN, partition=0, key=b"mixed",
    )
    stats = await p0.process([start, batch])

    assert stats.forwarded == 2
    fwd = env.sink.of(FORWARD)
    assert [(m.partition, m.key, m.origin) for m in fwd] == [
        (1, theirs.encode(), f"events:0:{start.offset}:"),
        (1, theirs.encode(), f"events:0:{batch.offset}:1"),
    ]
    assert fwd[0].value == start.value
    assert orjson.loads(fwd[1].value) == {"type": "usage", "timestamp": T0 + MIN, "user_id": theirs, "id": "b1"}
    assert [m.timestamp_ms for m in fwd] == [T0, T0 + MIN]
    # only the local element stayed on partition 0
    assert [r["user_id"] for r in await p0.store.open_sessions()] == [mine]

    # partition 1 reads them from the repartition topic: the events keep their origin
    await p1.process([env.forwarded(m, 1) for m in fwd])
    await p1.process([env.event("sessionend", user=theirs, at=2 * MIN, partition=1, id="f2")])
    [closed] = env.sink.sessions()
    assert closed["user_id"] == theirs
    assert [(e["id"], e["partition"], e["offset"]) for e in closed["events"]] == [
        ("f1", 0, start.offset), ("b1", 0, batch.offset), ("f2", 1, 0),
    ]
    assert p1.resume_offset(TOPICS.repartition) == 2
    assert p1.resume_offset(TOPICS.events) == 1

    # a forwarded record is never forwarded again, even to another partition
    stray = env.record(
        orjson.dumps({"type": "usage", "timestamp": T0, "user_id": other}), partition=0,
        topic=TOPICS.repartition, headers=[(ORIGIN_HEADER, b"events:1:99:")],
    )
    sent = len(env.sink.sent)
    assert (await p0.process([stray])).forwarded == 0
    assert len(env.sink.sent) == sent


@scenario
async def a_dead_letter_of_a_forwarded_event_names_its_origin(world: World) -> None:
    env = Env(world, partitions=2)
    [local, remote] = users_on(1, count=2)
    p1 = await env.processor(1)
    end_origin = env.record(  # read on partition 0 at offset 0, forwarded
        orjson.dumps({"type": "sessionend", "timestamp": T0, "user_id": remote}),
        partition=0, key=b"remote-key",
    )
    # same offset (0) on partition 1's events topic, rejected by the session rules
    local_end = env.event("sessionend", user=local, at=0, partition=1)
    fwd = env.forwarded(
        Outgoing(FORWARD, b"remote-key", end_origin.value or b"", T0, partition=1,
                 origin=f"events:0:{end_origin.offset}:"),
        1,
    )
    usage_origin = env.record(  # read on partition 0 at offset 1, forwarded
        orjson.dumps({"type": "usage", "timestamp": T0, "user_id": remote}), partition=0, key=b"r2"
    )
    local_bad = env.record(b"nope", partition=1, key=b"bad")  # partition 1, offset 1
    fwd2 = env.forwarded(
        Outgoing(FORWARD, b"r2", usage_origin.value or b"", T0, partition=1,
                 origin=f"events:0:{usage_origin.offset}:"),
        1,
    )

    await p1.process([local_end, local_bad, fwd, fwd2])

    letters = {(d["partition"], d["offset"]): d for d in env.sink.dead_letters()}
    assert set(letters) == {(1, 0), (1, 1), (0, 0)}
    assert letters[(1, 0)]["error"] == "end_without_session"
    assert letters[(1, 0)]["key"] == local
    assert orjson.loads(letters[(1, 0)]["value"])["user_id"] == local
    assert letters[(0, 0)]["error"] == "end_without_session"
    assert letters[(0, 0)]["key"] == "remote-key"
    assert orjson.loads(letters[(0, 0)]["value"])["user_id"] == remote
    assert letters[(1, 1)]["error"] == "invalid_json"
    assert all(d["topic"] == "events" for d in letters.values())


@scenario
async def a_forwarded_batch_element_rejected_by_the_rules_is_a_dead_letter_of_its_element(
    world: World,
) -> None:
    """A sessionend from element 1 of a batch read on partition 0, forwarded alone to
    partition 1 and refused there (no open session): its dead letter names the batch
    record and the element, and holds the element, the forwarded record's whole value."""
    env = Env(world, partitions=2)
    [mine] = users_on(0, count=1)
    [remote] = users_on(1, count=1)
    p0, p1 = await env.processor(0), await env.processor(1)
    end = {"type": "sessionend", "timestamp": T0, "user_id": remote, "id": "e1"}
    batch = env.record(
        orjson.dumps([{"type": "usage", "timestamp": T0, "user_id": mine, "id": "u0"}, end]),
        partition=0, key=b"mixed",
    )
    await p0.process([batch])
    [fwd] = env.sink.of(FORWARD)
    assert fwd.origin == f"events:0:{batch.offset}:1"

    stats = await p1.process([env.forwarded(fwd, 1)])

    assert stats.rejected == {"end_without_session": 1}
    [letter] = env.sink.dead_letters()
    assert (letter["partition"], letter["offset"], letter["index"]) == (0, batch.offset, 1)
    assert letter["error"] == "end_without_session"
    assert orjson.loads(letter["value"]) == end
    assert p1.resume_offset(TOPICS.repartition) == 1


@scenario
async def a_repartition_record_with_a_malformed_origin_is_applied_where_it_was_read(
    world: World,
) -> None:
    """The origin header is written by workers; one that does not parse (another writer
    on the internal topic) must not stop the partition: the record counts as read where
    it was, on the repartition topic."""
    env = Env(world)
    proc = await env.processor()
    headers = [b"garbage", b"events:x:y:", b"\xff\xfe", b"events:0:", b"events:0:5:z"]
    records = [
        env.record(
            orjson.dumps({"type": "usage", "timestamp": T0 + i, "user_id": "zed", "id": f"m{i}"}),
            topic=TOPICS.repartition, key=b"zed", headers=[(ORIGIN_HEADER, header)],
        )
        for i, header in enumerate(headers)
    ]
    records.append(env.record(b"{not json", topic=TOPICS.repartition, key=b"zed",
                              headers=[(ORIGIN_HEADER, b"nonsense")]))

    stats = await proc.process(records)

    assert (stats.events, stats.rejected) == (len(headers), {"invalid_json": 1})
    [live] = await proc.store.open_sessions()
    assert [(e["id"], e["partition"], e["offset"]) for e in live["events"]] == [
        (f"m{i}", 0, i) for i in range(len(headers))
    ]
    [letter] = env.sink.dead_letters()
    assert (letter["partition"], letter["offset"]) == (0, len(headers))
    assert proc.resume_offset(TOPICS.repartition) == len(records)


# -- crash, replay, fencing --------------------------------------------------------------


def _distinct(sink: ListSink) -> dict[tuple[str, int], dict[str, Any]]:
    """The session records sent, one per ``(session_id, revision)`` (repeats are equal)."""
    return {(r["session_id"], r["revision"]): r for r in sink.sessions()}


def _day(env: Env) -> list[Rec]:
    """Three users: one session ended, one left idle, one still open at the end."""
    return [
        env.event("session", user="alice", at=0, id="a1"),
        env.event("session", user="bob", at=10 * SEC, id="b1"),
        env.event("usage", user="alice", at=1 * MIN, id="a2"),
        env.event("sessionend", user="alice", at=2 * MIN, id="a3"),
        env.event("session", user="carol", at=8 * MIN, id="c1"),  # bob idles out here
        env.event("usage", user="carol", at=9 * MIN, id="c2"),
        env.event("sessionend", user="carol", at=10 * MIN, id="c3"),
        env.event("session", user="dave", at=11 * MIN, id="d1"),
    ]


@scenario
async def replaying_after_a_crash_changes_nothing_and_resends_only_the_outbox(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)
    log = _day(env)
    first = await env.processor()
    for batch in (log[:2], log[2:4], log[4:6], log[6:]):
        await first.process(batch)

    sent = list(env.sink.sent)
    assert [(r["user_id"], r["close_reason"]) for r in env.sink.sessions()] == [
        ("alice", "ended"), ("bob", "timeout"), ("carol", "ended"),
    ]
    unacked = await outbox_of(first.store)
    assert unacked == wire(sent[-1:])  # the last batch's close: sent, not yet trimmed
    before = await world.snapshot()

    # crash: a new owner, from a new claim on the same state
    second = await env.processor()
    assert second.resume_offset(TOPICS.events) == len(log)
    assert await second.recover_outbox() == 1
    assert wire(env.sink.sent) == wire(sent) + unacked

    for batch in (log[:3], log[3:], log):
        await second.process(batch)
    assert wire(env.sink.sent) == wire(sent) + unacked
    assert await world.snapshot() == before
    assert [r["user_id"] for r in await second.store.open_sessions()] == ["dave"]


@scenario
async def a_replay_from_the_middle_gives_the_same_sessions(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)
    log = _day(env)
    first = await env.processor()
    await first.process(log[:3])
    await first.process(log[3:5])
    # crash before the rest was applied; the new owner is handed the log from the start
    second = await env.processor()
    await second.recover_outbox()
    await second.process(log)

    distinct = _distinct(env.sink)
    assert sorted((r["user_id"], r["close_reason"], r["event_count"]) for r in distinct.values()) == [
        ("alice", "ended", 3), ("bob", "timeout", 1), ("carol", "ended", 3),
    ]
    ids = {r["user_id"]: r["session_id"] for r in distinct.values()}

    # the same log on a fresh partition: the same session ids
    alone = Env(MemoryWorld())
    alone.wall.advance(60 * MIN)
    proc = await alone.processor()
    await proc.process(_day(alone))
    assert {r["user_id"]: r["session_id"] for r in alone.sink.sessions()} == ids


def _closes(sink: ListSink) -> list[tuple[Any, ...]]:
    return [(r["user_id"], r["session_id"], r["close_reason"], r["event_count"], r["end"])
            for r in sink.sessions()]


#: ``_day`` in three batches
_DAY_BATCHES = (slice(0, 2), slice(2, 5), slice(5, None))


async def _day_in(env: Env, proc: PartitionProcessor, batches: Sequence[slice]) -> None:
    """``_day`` in those batches, a caught-up tick after each, then 20 minutes later."""
    log = _day(env)
    for part in batches:
        await proc.process(log[part])
        await proc.tick(caught_up=True)
    env.wall.advance(20 * MIN)
    await proc.tick(caught_up=True)


async def _day_alone(batches: Sequence[slice]) -> ListSink:
    """What a fresh partition sends for ``_day`` in those batches (``_day_in``)."""
    alone = Env(MemoryWorld())
    alone.wall.advance(60 * MIN)
    await _day_in(alone, await alone.processor(), batches)
    return alone.sink


@scenario
async def a_warm_processor_reads_no_state_per_batch_and_closes_alike(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)
    store = CountingStore(world.open_store())
    proc = await env.processor(store=store, warm=True)
    assert proc.complete  # a partition without state: the engine holds all of it (none)
    await _day_in(env, proc, _DAY_BATCHES)
    assert dict(store.calls) == {}
    closes = _closes(env.sink)
    assert [(user, reason) for user, _, reason, _, _ in closes] == [
        ("alice", "ended"), ("bob", "timeout"), ("carol", "ended"), ("dave", "timeout"),
    ]
    assert closes == _closes(await _day_alone(_DAY_BATCHES))


@scenario
async def a_new_owner_is_handed_every_state_and_goes_on_as_the_first_would(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)
    log = _day(env)
    first = await env.processor()
    await first.process(log[:2])
    await first.process(log[2:5])  # alice ended (kept for the reopen grace), bob idled out

    store = CountingStore(world.open_store())
    second = await env.processor(store=store, warm=True)
    assert second.complete
    assert sorted(key[2] for key in second.engine.states) == ["alice", "bob", "carol"]
    await second.recover_outbox()
    await second.process(log)  # the log from the start: what was applied is skipped
    await second.tick(caught_up=True)
    env.wall.advance(20 * MIN)
    await second.tick(caught_up=True)  # dave idles out
    assert dict(store.calls) == {}

    assert _distinct(env.sink) == _distinct(await _day_alone(_DAY_BATCHES))


@scenario
async def states_that_do_not_fit_in_the_cache_load_as_they_are_touched(world: World) -> None:
    env = Env(world)
    env.wall.advance(60 * MIN)
    log = _day(env)
    first = await env.processor()
    await first.process(log[:5])

    store = CountingStore(world.open_store())
    # three key states, and a cache of two: no room to grow once warmed
    second = await env.processor(store=store, warm=True, cache_keys=2)
    assert not second.complete and second.engine.states == {}
    await second.process(log)
    assert store.calls["load"] == 1
    distinct = _distinct(env.sink)
    assert sorted((r["user_id"], r["close_reason"], r["event_count"]) for r in distinct.values()) == [
        ("alice", "ended", 3), ("bob", "timeout", 1), ("carol", "ended", 3),
    ]


@scenario
async def evicting_a_key_ends_completeness_and_the_key_loads_again(world: World) -> None:
    env = Env(world)
    store = CountingStore(world.open_store())
    proc = await env.processor(store=store, warm=True, cache_keys=2)
    assert proc.complete
    await proc.process([env.event("session", user="alice", at=0, id="a1")])
    await proc.process([env.event("session", user="bob", at=1 * SEC, id="b1")])
    assert proc.complete and dict(store.calls) == {}
    await proc.process([env.event("session", user="carol", at=2 * SEC, id="c1")])
    assert not proc.complete  # alice went back to the store
    assert sorted(key[2] for key in proc.engine.states) == ["bob", "carol"]

    await proc.process([env.event("usage", user="alice", at=3 * SEC, id="a2")])
    assert store.calls["load"] == 1
    records = {r["user_id"]: r for r in await store.open_sessions()}
    assert records["alice"]["event_count"] == 2  # the session went on, not a new one
    assert [e["id"] for e in (await store.get_session(records["alice"]["session_id"]))["events"]] == [
        "a1", "a2",
    ]


@scenario
async def a_fenced_processor_cannot_commit(world: World) -> None:
    env = Env(world)
    old = await env.processor()
    await old.process([env.event("session", user="alice", at=0)])
    new = await env.processor()  # another worker claims the partition
    before = await world.snapshot()
    end, usage = env.event("sessionend", user="alice", at=MIN), env.event("usage", user="bob", at=2 * MIN)

    with pytest.raises(FencedError):
        await old.process([end])
    with pytest.raises(FencedError):
        await old.process([usage])
    assert env.sink.sent == []
    assert await world.snapshot() == before

    # the new owner carries on from what was committed
    assert new.resume_offset(TOPICS.events) == 1
    await new.process([end, usage])
    assert [r["close_reason"] for r in env.sink.sessions()] == ["ended"]


# -- the outbox ------------------------------------------------------------------------------


@scenario
async def the_outbox_is_trimmed_by_the_next_commit_after_a_send(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    store = proc.store

    await proc.process([env.event("session", at=0), env.event("sessionend", at=MIN), env.record(b"x")])
    assert [m.kind for m in env.sink.sent] == [DEAD_LETTER, SESSION]
    # written with the state, sent, acknowledged: trimmed by the next commit
    assert await outbox_of(store) == wire(env.sink.sent)

    await proc.process([env.event("session", user="bob", at=2 * MIN)])
    assert await store.outbox(0) == []

    await proc.process([env.event("sessionend", user="bob", at=3 * MIN)])
    assert len(await store.outbox(0)) == 1
    env.wall.advance(1 * SEC)
    await proc.tick(caught_up=True)  # a tick commits the trim even with nothing due
    assert await store.outbox(0) == []
    assert len(env.sink.sent) == 3


@scenario
async def messages_survive_in_the_outbox_when_the_sink_fails(world: World) -> None:
    env = Env(world)
    broken = ListSink()
    broken.fail = RuntimeError("broker refused the batch")
    proc = await env.processor(sink=broken)

    with pytest.raises(RuntimeError, match="refused"):
        await proc.process([env.event("session", at=0), env.event("sessionend", at=MIN)])
    pending = await outbox_of(proc.store)
    assert [m[0] for m in pending] == [SESSION]
    assert broken.sent == []

    # the partition is claimed again (the worker does so after a failed send)
    again = await env.processor()
    assert await again.recover_outbox() == 1
    assert wire(env.sink.sent) == pending
    assert again.resume_offset(TOPICS.events) == 2  # the batch itself is not redone

    await again.process([env.event("usage", user="bob", at=2 * MIN)])
    assert await again.store.outbox(0) == []
    assert wire(env.sink.sent) == pending


@scenario
async def after_a_failed_send_the_same_processor_sends_the_outbox_before_going_on(world: World) -> None:
    env = Env(world)
    proc = await env.processor()
    env.sink.fail = OSError("connection reset")
    ended = [env.event("session", at=0), env.event("sessionend", at=MIN)]
    with pytest.raises(OSError):
        await proc.process(ended)

    env.sink.fail = None
    await proc.process(ended)  # the worker retries the batch: applied already
    await proc.process([env.event("session", user="bob", at=2 * MIN), env.event("sessionend", user="bob", at=3 * MIN)])
    env.wall.advance(1 * SEC)
    await proc.tick(caught_up=True)
    await proc.tick(caught_up=True)

    delivered = {r["user_id"] for r in env.sink.sessions()}
    assert delivered == {"alice", "bob"}
    assert await proc.store.outbox(0) == []


class _LosesOneReply:
    """A store whose next commit is applied but its reply lost (a dropped connection)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lose_next = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commit(self, partition: int, epoch: int, commit: Any) -> bool:
        applied = await self.inner.commit(partition, epoch, commit)
        if self.lose_next:
            self.lose_next = False
            raise ConnectionError("connection lost before the reply")
        return applied


@scenario
async def a_commit_whose_reply_was_lost_loses_no_message(world: World) -> None:
    env = Env(world)
    store = _LosesOneReply(world.open_store())
    proc = await env.processor(store=store)

    await proc.process([env.event("session", user="alice", at=0), env.event("sessionend", user="alice", at=MIN)])
    store.lose_next = True
    bob = [env.event("session", user="bob", at=2 * MIN), env.event("sessionend", user="bob", at=3 * MIN)]
    with pytest.raises(ConnectionError):
        await proc.process(bob)
    await proc.process(bob)  # the worker retries the batch
    await proc.process([env.event("session", user="carol", at=4 * MIN), env.event("sessionend", user="carol", at=5 * MIN)])
    env.wall.advance(1 * SEC)
    await proc.tick(caught_up=True)
    await proc.tick(caught_up=True)

    assert {r["user_id"] for r in env.sink.sessions()} == {"alice", "bob", "carol"}
    assert await store.outbox(0) == []


# -- the tests -------------------------------------------------------------------------------


@pytest.fixture
def world() -> MemoryWorld:
    return MemoryWorld()


# -- revisions never go back (SPEC 4) ------------------------------------------------------


@scenario
async def a_client_session_id_reused_after_the_grace_goes_on_above_its_revision(world: World) -> None:
    env = Env(world)
    # a replay: the wall clock is past every arrival time, which is never clamped
    env.wall.advance(90 * MIN)
    proc = await env.processor()
    sid = "client-session-0001"
    await proc.process([env.event("session", at=0, id="a1", session_id=sid)])
    await proc.process([env.event("sessionend", at=1 * MIN, id="a2", session_id=sid)])
    await proc.process([env.event("usage", at=30 * SEC, arrival=2 * MIN, id="a3", session_id=sid)])
    # long past the reopen grace, the client uses the id again: a new session, revision 3
    await proc.process([env.event("session", at=40 * MIN, id="a4", session_id=sid)])
    await proc.process([env.event("sessionend", at=41 * MIN, id="a5", session_id=sid)])
    # and once more, from a new owner of the partition (a claim rebuilds the state)
    proc = await env.processor()
    await proc.process([env.event("session", at=80 * MIN, id="a6", session_id=sid)])
    await proc.process([env.event("sessionend", at=81 * MIN, id="a7", session_id=sid)])
    got = [(r["session_id"], r["revision"], r["event_count"]) for r in env.sink.sessions()]
    assert got == [(sid, 1, 2), (sid, 2, 3), (sid, 3, 2), (sid, 4, 2)]


@scenario
async def a_client_session_id_forgotten_within_one_batch_goes_on_above_its_revision(
    world: World,
) -> None:
    env = Env(world)
    # a replay: the wall clock is past every arrival time, which is never clamped
    env.wall.advance(60 * MIN)
    proc = await env.processor()
    sid = "client-session-0001"
    # one batch begins the session, ends it, reopens it (revision 2) and, as another
    # user's event moves the clock past the reopen grace, forgets it: no key state is
    # left to hold revision 2, so the store's revision marks must
    await proc.process([
        env.event("session", at=0, id="a1", session_id=sid),
        env.event("sessionend", at=1 * MIN, id="a2", session_id=sid),
        env.event("usage", at=30 * SEC, arrival=2 * MIN, id="a3", session_id=sid),
        env.event("usage", user="bob", at=40 * MIN, id="b1"),
    ])
    await proc.process([env.event("session", at=41 * MIN, id="a4", session_id=sid)])
    await proc.process([env.event("sessionend", at=42 * MIN, id="a5", session_id=sid)])
    got = [(r["session_id"], r["revision"], r["event_count"]) for r in env.sink.sessions()
           if r["session_id"] == sid]
    assert got == [(sid, 1, 2), (sid, 2, 3), (sid, 3, 2)]


@scenario
async def a_client_session_id_moved_to_another_partition_goes_on_above_its_revision(
    world: World,
) -> None:
    env = Env(world, partitions=1)
    old = await env.processor(0)
    moved = next(f"moved-session-{i:04d}" for i in range(1000) if Router(2).partition_of(
        f"moved-session-{i:04d}") == 1)
    await old.process([env.event("session", at=0, id="m1", session_id=moved)])
    await old.process([env.event("sessionend", at=1 * MIN, id="m2", session_id=moved)])
    await old.process([env.event("usage", at=30 * SEC, arrival=2 * MIN, id="m3", session_id=moved)])
    # partitions were added: the id routes to partition 1 now, which never saw it
    assert env.router.resize(2)
    new = await env.processor(1)
    await new.process([env.event("session", at=3 * MIN, id="m4", session_id=moved, partition=1)])
    await new.process([env.event("sessionend", at=4 * MIN, id="m5", session_id=moved, partition=1)])
    got = [(r["session_id"], r["revision"], r["event_count"]) for r in env.sink.sessions()]
    assert got == [(moved, 1, 2), (moved, 2, 3), (moved, 3, 2)]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_processor(world: World, scenario: Callable[[World], Awaitable[None]]) -> None:
    run(world, scenario)
