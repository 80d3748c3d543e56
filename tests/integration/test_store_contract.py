"""The store contract (pipeline.store.base), run against both backends.

Every test runs three times: on :class:`MemoryStore`, and on :class:`RedisStore` against
the session's real redis-server and against its Redis Cluster (3 masters, 3 replicas),
each Redis test under its own key prefix. The
Redis-only tests at the end check the key layout of :mod:`pipeline.store.keys`
and that a refused commit writes nothing.

Each test body is one coroutine run in its own event loop (``@contract``), with
the worker's calling pattern: load the keys a batch touches, then commit them.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
import pytest
from redis.crc import key_slot

from pipeline.core.event import Event, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.session import ENDED, KeyState, Session
from pipeline.core.timefmt import format_ms
from pipeline.exceptions import FencedError
from pipeline.store import codec
from pipeline.store.base import Commit, SessionStore
from pipeline.store.keys import Keys, keyid, parse_keyid, parse_who_member, who_member, who_prefix
from pipeline.store.memory import MemoryStore
from pipeline.store.redis import RedisStore

T0 = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
MIN = 60_000
RULES = SessionRules(inactivity_timeout_ms=5 * MIN, reopen_grace_ms=15 * MIN)


# -- backends -------------------------------------------------------------------


class Backend:
    """One backend for one test: store handles sharing the same data."""

    def __init__(self, kind: str, url: str | None = None) -> None:
        self.kind = kind
        self.url = url
        self.prefix = f"sz-test-{uuid.uuid4().hex[:12]}"
        self.keys = Keys(self.prefix)
        self._memory = MemoryStore()
        self._opened: list[RedisStore] = []

    def store(self) -> Any:
        """A store handle; for Redis a new client (another worker, say) on the same data."""
        if self.kind == "memory":
            return self._memory
        assert self.url is not None
        store = RedisStore.from_url(self.url, prefix=self.prefix)
        self._opened.append(store)
        return store

    async def snapshot(self) -> Any:
        """Everything the backend holds, comparable with ==."""
        if self.kind == "memory":
            return copy.deepcopy(self._memory.shards)
        client = self._opened[0].client if self._opened else self.store().client
        return await dump_keys(client, self.prefix)

    def run(self, body: Callable[[Backend], Awaitable[None]]) -> None:
        async def main() -> None:
            try:
                await body(self)
            finally:
                for store in self._opened:
                    await store.close()
                self._opened.clear()

        asyncio.run(main())


async def dump_keys(client: Any, prefix: str) -> dict[bytes, tuple[bytes, Any]]:
    """Every key under ``prefix``: its type and value."""
    found: dict[bytes, tuple[bytes, Any]] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        if kind == b"string":
            value: Any = await client.get(key)
        elif kind == b"hash":
            value = await client.hgetall(key)
        elif kind == b"set":
            value = await client.smembers(key)
        elif kind == b"zset":
            value = await client.zrange(key, 0, -1, withscores=True)
        elif kind == b"list":
            value = await client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        found[key] = (kind, value)
    return found


@pytest.fixture(params=["memory", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest) -> Backend:
    if request.param == "memory":
        return Backend("memory")
    if request.param == "redis-cluster":
        return Backend("redis", request.getfixturevalue("redis_cluster").url)
    return Backend("redis", request.getfixturevalue("redis_server").url)


def contract(body: Callable[[Backend], Awaitable[None]]) -> Callable[[Backend], None]:
    """A test running ``async def body(backend)`` on each backend."""

    def test(backend: Backend) -> None:
        backend.run(body)

    test.__name__, test.__doc__ = body.__name__, body.__doc__
    return test


@pytest.fixture(params=["redis", "redis-cluster"])
def redis_backend(request: pytest.FixtureRequest) -> Backend:
    service = "redis_cluster" if request.param == "redis-cluster" else "redis_server"
    return Backend("redis", request.getfixturevalue(service).url)


def redis_only(body: Callable[[Backend], Awaitable[None]]) -> Callable[[Backend], None]:
    """A test running ``async def body(backend)`` on Redis alone."""

    def test(redis_backend: Backend) -> None:
        redis_backend.run(body)

    test.__name__, test.__doc__ = body.__name__, body.__doc__
    return test


# -- states -----------------------------------------------------------------------


def user_key(user: str, project: str = "shop") -> SessionKey:
    return (project, "u", user)


def open_state(
    key: SessionKey, session_id: str, start_ms: int = T0, user_id: str | None = None
) -> KeyState:
    """A key with one open session holding one event."""
    project, kind, ident = key
    ev = Event(
        type="session",
        time_ms=start_ms,
        arrival_ms=start_ms,
        project=project,
        user_id=ident if kind == "u" else user_id,
        session_id=ident if kind == "s" else None,
        id=f"ev-{session_id}",
        partition=0,
        offset=1,
    )
    session = Session.begin(session_id, ev)
    session.add(ev, RULES)
    return KeyState(key, open=session)


def closed(state: KeyState, at_ms: int) -> KeyState:
    """The same key once its open session closed (kept for the reopen grace)."""
    again = codec.key_state_from_state(copy.deepcopy(codec.to_state(state)))
    session = again.open
    assert session is not None
    session.close(ENDED, at_ms)
    return KeyState(again.key, open=None, closed=[session])


def history_entry(
    key: SessionKey, session_id: str, start_ms: int, end_ms: int
) -> tuple[str, str, int, bytes]:
    """A closed session's history entry: (session_id, project, end, record), as the worker
    writes it."""
    session = open_state(key, session_id, start_ms).open
    assert session is not None
    session.last_activity_ms = end_ms
    session.close(ENDED, end_ms)
    return (session_id, key[0], end_ms, orjson.dumps(session.to_record()))


def as_dicts(states: Iterable[KeyState]) -> list[dict[str, Any]]:
    return [codec.to_state(s) for s in states]


def ids(records: Iterable[Mapping[str, Any]]) -> list[str]:
    return [r["session_id"] for r in records]


async def put(
    store: SessionStore,
    partition: int,
    epoch: int,
    states: Mapping[SessionKey, KeyState | None],
    *,
    due: Mapping[SessionKey, int | None] | None = None,
    offsets: Mapping[str, int] | None = None,
    clock_ms: int = T0,
    outgoing: list[bytes] | None = None,
    acked: int = 0,
    history: list[tuple[str, str, int, bytes]] | None = None,
) -> bool:
    """Load the keys, then commit them, as the worker does."""
    await store.load(partition, list(states), None, 0)
    return await store.commit(
        partition,
        epoch,
        Commit(
            states=states,
            due_ms=due or {},
            offsets=offsets or {},
            clock_ms=clock_ms,
            outgoing=outgoing or [],
            acked=acked,
            history=history or [],
        ),
    )


# -- claim ------------------------------------------------------------------------


@contract
async def test_claim_bumps_the_epoch_and_returns_offsets_and_clock(backend: Backend) -> None:
    store = backend.store()
    first = await store.claim(2)
    assert (first.partition, first.offsets, first.clock_ms) == (2, {}, 0)

    assert await put(store, 2, first.epoch, {}, offsets={"events": 41, "repartition": 7}, clock_ms=T0 + 5)

    second = await backend.store().claim(2)
    assert second.epoch == first.epoch + 1
    assert second.offsets == {"events": 41, "repartition": 7}
    assert second.clock_ms == T0 + 5

    third = await store.claim(2)
    assert third.epoch == second.epoch + 1
    other = await store.claim(5)  # partitions are fenced independently
    assert (other.epoch, other.offsets, other.clock_ms) == (first.epoch, {}, 0)


# -- commit and load ------------------------------------------------------------------


@contract
async def test_commit_writes_states_due_offsets_and_clock(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    alice, bob = user_key("alice"), user_key("bob")
    states = {alice: open_state(alice, "s-alice"), bob: open_state(bob, "s-bob", T0 + 1000)}

    assert await put(
        store, 0, claim.epoch, states,
        due={alice: T0 + 100, bob: T0 + 200}, offsets={"events": 3}, clock_ms=T0 + 50,
    )

    loaded = await store.load(0, [bob, alice], None, 0)
    assert as_dicts(loaded) == as_dicts([states[bob], states[alice]])
    due = await store.load(0, [], T0 + 150, 10)
    assert as_dicts(due) == as_dicts([states[alice]])
    resumed = await backend.store().claim(0)
    assert resumed.offsets == {"events": 3}
    assert resumed.clock_ms == T0 + 50


@contract
async def test_load_returns_asked_keys_plus_keys_due_by_the_clock(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(1)
    keys = [user_key(f"user-{i}") for i in range(5)]
    states = {k: open_state(k, f"s{i}", T0 + i) for i, k in enumerate(keys)}
    due = {keys[0]: 300, keys[1]: 100, keys[2]: 200, keys[3]: None, keys[4]: 400}
    assert await put(store, 1, claim.epoch, states, due=due)
    missing = user_key("nobody")

    def users(found: list[KeyState]) -> list[str]:
        return [s.key[2] for s in found]

    # asked keys first (missing ones left out), then due ones, earliest first
    assert users(await store.load(1, [keys[3], missing], 250, 10)) == ["user-3", "user-1", "user-2"]
    # due_limit bounds the keys added for being due
    assert users(await store.load(1, [keys[3]], 1000, 2)) == ["user-3", "user-1", "user-2"]
    assert users(await store.load(1, [], 1000, 1)) == ["user-1"]
    assert users(await store.load(1, [keys[3]], 1000, 0)) == ["user-3"]
    # no clock: only the asked keys
    assert users(await store.load(1, [keys[4], keys[0]], None, 10)) == ["user-4", "user-0"]
    # an asked key that is also due comes once
    assert users(await store.load(1, [keys[1]], 200, 10)) == ["user-1", "user-2"]
    # the bound is inclusive
    assert users(await store.load(1, [], 99, 10)) == []
    assert users(await store.load(1, [], 100, 10)) == ["user-1"]
    # other partitions are separate
    assert await store.load(2, keys, 1000, 10) == []


@contract
async def test_load_all_returns_every_state_of_the_partition_when_they_fit(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(3)
    assert await store.load_all(3, 10) == []
    keys = [user_key(f"user-{i}") for i in range(3)]
    states: dict[SessionKey, KeyState | None] = {
        k: open_state(k, f"s{i}", T0 + i) for i, k in enumerate(keys)
    }
    ended = closed(open_state(keys[2], "s2", T0 + 2), T0 + MIN)
    assert await put(store, 3, claim.epoch, states, offsets={"events": 1})
    assert await put(store, 3, claim.epoch, {keys[2]: ended}, offsets={"events": 2})
    other = await store.claim(4)
    assert await put(store, 4, other.epoch, {user_key("elsewhere"): open_state(user_key("elsewhere"), "x")})

    def by_user(found: list[KeyState] | None) -> list[dict[str, Any]]:
        assert found is not None
        return sorted(as_dicts(found), key=lambda state: state["k"])

    expected = by_user([s for s in (states[keys[0]], states[keys[1]], ended) if s is not None])
    assert by_user(await store.load_all(3, 3)) == expected
    assert by_user(await backend.store().load_all(3, 100)) == expected  # another client alike
    assert await store.load_all(3, 2) is None  # more than the limit: nothing
    assert await store.load_all(7, 0) == []  # a partition never written


@contract
async def test_has_due_answers_by_the_due_index_alone(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(1)
    assert not await store.has_due(1, 10**15)  # nothing stored
    keys = [user_key("early"), user_key("late")]
    states = {k: open_state(k, f"s{i}") for i, k in enumerate(keys)}
    assert await put(store, 1, claim.epoch, states, due={keys[0]: 200, keys[1]: 400})
    assert not await store.has_due(1, 199)
    assert await store.has_due(1, 200)  # inclusive, like load's bound
    assert not await store.has_due(2, 10**15)  # per partition


@contract
async def test_a_none_state_deletes_the_key_and_its_due_entry(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    alice, bob = user_key("alice"), user_key("bob")
    states = {alice: open_state(alice, "s-alice"), bob: open_state(bob, "s-bob")}
    assert await put(store, 0, claim.epoch, states, due={alice: 10, bob: 20})

    assert await put(store, 0, claim.epoch, {alice: None}, due={alice: None})

    assert await store.load(0, [alice], None, 0) == []
    assert [s.key for s in await store.load(0, [], 1000, 10)] == [bob]
    assert ids(await store.open_sessions()) == ["s-bob"]
    assert await store.get_session("s-alice") is None


@contract
async def test_a_due_entry_can_be_cleared_while_the_state_stays(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    alice = user_key("alice")
    state = open_state(alice, "s-alice")
    assert await put(store, 0, claim.epoch, {alice: state}, due={alice: 10})
    assert await put(store, 0, claim.epoch, {alice: state}, due={alice: None})
    assert await store.load(0, [], 1000, 10) == []
    assert as_dicts(await store.load(0, [alice], None, 0)) == as_dicts([state])
    assert await put(store, 0, claim.epoch, {alice: state}, due={alice: 50})
    assert [s.key for s in await store.load(0, [], 50, 10)] == [alice]


# -- fencing and the offset guard ---------------------------------------------------------


@contract
async def test_a_commit_with_a_stale_epoch_is_fenced_and_writes_nothing(backend: Backend) -> None:
    old_owner, new_owner = backend.store(), backend.store()
    old = await old_owner.claim(3)
    alice = user_key("alice")
    assert await put(
        old_owner, 3, old.epoch, {alice: open_state(alice, "s1")},
        due={alice: 10}, offsets={"events": 1}, outgoing=[b"m1", b"m2"],
    )
    new = await new_owner.claim(3)
    assert new.epoch > old.epoch
    before = await backend.snapshot()

    bob = user_key("bob")
    with pytest.raises(FencedError, match="partition 3"):
        await put(
            old_owner, 3, old.epoch, {alice: None, bob: open_state(bob, "s2")},
            due={bob: 20}, offsets={"events": 2}, clock_ms=T0 + 99, outgoing=[b"m3"], acked=2,
        )

    assert await backend.snapshot() == before
    assert await new_owner.outbox(3) == [b"m1", b"m2"]
    assert ids(await new_owner.open_sessions()) == ["s1"]
    # the new owner writes normally
    assert await put(new_owner, 3, new.epoch, {bob: open_state(bob, "s2")}, offsets={"events": 2})


@contract
async def test_a_commit_of_offsets_already_applied_returns_false_and_writes_nothing(
    backend: Backend,
) -> None:
    store = backend.store()
    claim = await store.claim(0)
    alice, bob = user_key("alice"), user_key("bob")
    assert await put(
        store, 0, claim.epoch, {alice: open_state(alice, "s1")},
        due={alice: 10}, offsets={"events": 5, "repartition": 3}, clock_ms=T0, outgoing=[b"m1"],
    )
    before = await backend.snapshot()

    for offsets in ({"events": 5}, {"events": 4}, {"events": 6, "repartition": 3}, {"repartition": 0}):
        applied = await put(
            store, 0, claim.epoch, {alice: None, bob: open_state(bob, "s2")},
            due={bob: 1}, offsets=offsets, clock_ms=T0 + 1000, outgoing=[b"again"], acked=1,
        )
        assert applied is False, offsets
        assert await backend.snapshot() == before, offsets

    # newer offsets apply; a topic seen for the first time applies from any offset
    assert await put(store, 0, claim.epoch, {}, offsets={"events": 6, "other": 0})
    assert (await backend.store().claim(0)).offsets == {"events": 6, "repartition": 3, "other": 0}


@contract
async def test_a_commit_on_a_partition_never_claimed_is_fenced(backend: Backend) -> None:
    store = backend.store()
    before = await backend.snapshot()
    for epoch in (0, 1):
        with pytest.raises(FencedError):
            await put(store, 9, epoch, {user_key("alice"): open_state(user_key("alice"), "s1")})
    assert await backend.snapshot() == before
    assert await store.open_sessions() == []


# -- the outbox --------------------------------------------------------------------------


@contract
async def test_the_outbox_appends_in_order_and_acked_trims_the_head(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(4)
    assert await store.outbox(4) == []

    assert await put(store, 4, claim.epoch, {}, outgoing=[b"a", b"b", b"c"])
    assert await store.outbox(4) == [b"a", b"b", b"c"]

    # acked messages go from the head, before this commit's messages are appended
    assert await put(store, 4, claim.epoch, {}, outgoing=[b"d"], acked=2)
    assert await store.outbox(4) == [b"c", b"d"]

    assert await put(store, 4, claim.epoch, {}, acked=1)
    assert await store.outbox(4) == [b"d"]

    # acknowledging more than is there empties it
    assert await put(store, 4, claim.epoch, {}, outgoing=[b"e"], acked=5)
    assert await store.outbox(4) == [b"e"]

    assert await store.outbox(5) == []  # per partition


@contract
async def test_the_outbox_keeps_binary_messages_and_long_batches(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    binary = [b"", b"\x00\xff\n\r", bytes(range(256)), "é🙂".encode()]
    many = [f"m{i}".encode() for i in range(1203)]
    assert await put(store, 0, claim.epoch, {}, outgoing=binary)
    assert await put(store, 0, claim.epoch, {}, outgoing=many, acked=len(binary))
    assert await store.outbox(0) == many
    assert await put(store, 0, claim.epoch, {}, acked=1200)
    assert await store.outbox(0) == many[1200:]


# -- queries ------------------------------------------------------------------------------


async def _populate(backend: Backend) -> SessionStore:
    """Open sessions on two partitions, two projects, auto and manual."""
    store = backend.store()
    c0, c5 = await store.claim(0), await store.claim(5)
    assert await put(
        store, 0, c0.epoch,
        {
            user_key("alice"): open_state(user_key("alice"), "shop-alice", T0 + 1 * MIN),
            user_key("bob"): open_state(user_key("bob"), "shop-bob", T0 + 2 * MIN),
            user_key("alice", "blog"): open_state(user_key("alice", "blog"), "blog-alice", T0 + 3 * MIN),
        },
    )
    manual: SessionKey = ("shop", "s", "manual-0001")
    assert await put(
        store, 5, c5.epoch,
        {
            manual: open_state(manual, "manual-0001", T0 + 4 * MIN, user_id="alice"),
            user_key("carol"): open_state(user_key("carol"), "shop-carol", T0 + 5 * MIN),
            ("shop", "s", "anon-0001"): open_state(("shop", "s", "anon-0001"), "anon-0001", T0),
        },
    )
    return store


@contract
async def test_open_sessions_by_project_user_and_all(backend: Backend) -> None:
    store = await _populate(backend)

    everything = await store.open_sessions()
    # newest start first
    assert ids(everything) == [
        "shop-carol", "manual-0001", "blog-alice", "shop-bob", "shop-alice", "anon-0001",
    ]
    assert all(r["status"] == "open" for r in everything)
    assert ids(await store.open_sessions(project="shop")) == [
        "shop-carol", "manual-0001", "shop-bob", "shop-alice", "anon-0001",
    ]
    assert ids(await store.open_sessions(project="blog")) == ["blog-alice"]
    assert ids(await store.open_sessions(project="shop", user_id="alice")) == ["manual-0001", "shop-alice"]
    assert ids(await store.open_sessions(project="blog", user_id="alice")) == ["blog-alice"]
    assert ids(await store.open_sessions(user_id="alice")) == ["manual-0001", "blog-alice", "shop-alice"]
    assert await store.open_sessions(project="nope") == []
    assert await store.open_sessions(project="shop", user_id="nobody") == []
    assert await store.open_sessions(user_id="nobody") == []


@contract
async def test_open_sessions_limit(backend: Backend) -> None:
    store = await _populate(backend)
    assert len(await store.open_sessions(limit=2)) == 2
    assert len(await store.open_sessions(project="shop", limit=3)) == 3
    assert await store.open_sessions(limit=0) == []
    # the limit counts matching sessions only, however many others there are
    assert ids(await store.open_sessions(user_id="carol", limit=1)) == ["shop-carol"]
    assert ids(await store.open_sessions(user_id="bob", limit=1)) == ["shop-bob"]
    assert len(await store.open_sessions(user_id="alice", limit=2)) == 2


@contract
async def test_get_session_by_id(backend: Backend) -> None:
    store = await _populate(backend)
    record = await store.get_session("manual-0001")
    assert record is not None
    assert record["session_id"] == "manual-0001"
    assert (record["project"], record["user_id"], record["status"]) == ("shop", "alice", "open")
    assert record["start"] == format_ms(T0 + 4 * MIN)
    assert [e["id"] for e in record["events"]] == ["ev-manual-0001"]
    shop_bob = await store.get_session("shop-bob")
    assert shop_bob is not None
    assert shop_bob["user_id"] == "bob"
    assert await store.get_session("nope") is None


@contract
async def test_a_session_that_closes_leaves_the_open_indexes(backend: Backend) -> None:
    store = await _populate(backend)
    epoch = (await store.claim(0)).epoch
    alice = user_key("alice")
    [state] = await store.load(0, [alice], None, 0)

    assert await put(store, 0, epoch, {alice: closed(state, T0 + 10 * MIN)}, due={alice: T0 + 25 * MIN})

    assert await store.get_session("shop-alice") is None
    assert "shop-alice" not in ids(await store.open_sessions())
    assert "shop-alice" not in ids(await store.open_sessions(project="shop"))
    assert ids(await store.open_sessions(project="shop", user_id="alice")) == ["manual-0001"]
    # the closed session stays in the key's state for the reopen grace
    [kept] = await store.load(0, [alice], None, 0)
    assert kept.open is None
    assert [c.session_id for c in kept.closed] == ["shop-alice"]

    # a new session of the same key shows up under its own id
    fresh = KeyState(alice, open=open_state(alice, "shop-alice-2", T0 + 20 * MIN).open, closed=kept.closed)
    assert await put(store, 0, epoch, {alice: fresh})
    assert ids(await store.open_sessions(project="shop", user_id="alice")) == ["shop-alice-2", "manual-0001"]
    assert await store.get_session("shop-alice") is None
    assert await store.get_session("shop-alice-2") is not None


@contract
async def test_a_manual_session_whose_user_changes_moves_in_the_user_index(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    key: SessionKey = ("shop", "s", "manual-0002")
    state = open_state(key, "manual-0002", T0, user_id="dave")
    assert await put(store, 0, claim.epoch, {key: state})
    assert ids(await store.open_sessions(project="shop", user_id="dave")) == ["manual-0002"]

    [loaded] = await store.load(0, [key], None, 0)
    assert loaded.open is not None
    loaded.open.user_id = "erin"
    assert await put(store, 0, claim.epoch, {key: loaded})

    assert await store.open_sessions(project="shop", user_id="dave") == []
    assert ids(await store.open_sessions(project="shop", user_id="erin")) == ["manual-0002"]


@contract
async def test_two_projects_may_use_the_same_client_session_id(backend: Backend) -> None:
    """A session id is unique within its project only (the key is (project, session_id)):
    each project's session keeps its own index entries, and closing one leaves the other."""
    store = backend.store()
    claim = await store.claim(0)
    sid = "checkout-0001"
    shop, blog = ("shop", "s", sid), ("blog", "s", sid)
    shop_state = open_state(shop, sid, T0, user_id="ann")
    blog_state = open_state(blog, sid, T0 + MIN, user_id="bob")
    assert await put(store, 0, claim.epoch, {shop: shop_state, blog: blog_state})

    assert sorted((r["project"], r["user_id"]) for r in await store.open_sessions()) == [
        ("blog", "bob"), ("shop", "ann")]
    assert [r["project"] for r in await store.open_sessions(project="blog")] == ["blog"]
    assert [r["project"] for r in await store.open_sessions(user_id="ann")] == ["shop"]
    in_shop = await store.get_session(sid, "shop")
    assert in_shop is not None and (in_shop["project"], in_shop["user_id"]) == ("shop", "ann")
    in_blog = await store.get_session(sid, "blog")
    assert in_blog is not None and in_blog["user_id"] == "bob"
    assert await store.get_session(sid, "news") is None
    # without a project: the latest started
    latest = await store.get_session(sid)
    assert latest is not None and latest["project"] == "blog"

    # the blog session ends: the shop session stays open and indexed
    assert await put(store, 0, claim.epoch, {blog: closed(blog_state, T0 + 5 * MIN)},
                     history=[history_entry(blog, sid, T0 + MIN, T0 + 5 * MIN)])
    assert [r["project"] for r in await store.open_sessions()] == ["shop"]
    assert await store.get_session(sid, "blog") is None
    still = await store.get_session(sid)
    assert still is not None and still["project"] == "shop"

    # then the shop session: both are in the history, each under its project
    assert await put(store, 0, claim.epoch, {shop: closed(shop_state, T0 + 9 * MIN)},
                     history=[history_entry(shop, sid, T0, T0 + 9 * MIN)])
    assert await store.open_sessions() == []
    assert await store.get_session(sid) is None
    assert sorted(r["project"] for r in await store.closed_sessions()) == ["blog", "shop"]
    closed_blog = await store.get_closed_session(sid, "blog")
    assert closed_blog is not None and closed_blog["end"] == format_ms(T0 + 5 * MIN)
    closed_shop = await store.get_closed_session(sid, "shop")
    assert closed_shop is not None and closed_shop["end"] == format_ms(T0 + 9 * MIN)
    latest_closed = await store.get_closed_session(sid)
    assert latest_closed is not None and latest_closed["project"] == "shop"
    assert await store.get_closed_session(sid, "news") is None
    assert await store.get_closed_session("checkout-0002") is None


@redis_only
async def test_redis_lookup_by_id_takes_the_id_literally(backend: Backend) -> None:
    """The lookup by id scans with a glob: the id's glob characters match only themselves
    (a schema of one's own may allow them in session ids)."""
    store = backend.store()
    claim = await store.claim(0)
    odd, plain = ("shop", "s", "a*[b]?"), ("shop", "s", "axbb")
    assert await put(store, 0, claim.epoch, {
        odd: open_state(odd, "a*[b]?", T0, user_id="ann"), plain: open_state(plain, "axbb", T0, user_id="bob"),
    })
    found = await store.get_session("a*[b]?")
    assert found is not None and found["user_id"] == "ann"
    assert await store.get_session("a*") is None
    assert await store.get_session("a") is None


# -- history of closed sessions --------------------------------------------------------------


@contract
async def test_closed_sessions_come_from_the_history_newest_end_first(backend: Backend) -> None:
    store = backend.store()
    c0, c1 = await store.claim(0), await store.claim(1)
    alice, bob, carol = user_key("alice"), user_key("bob"), user_key("carol")
    assert await put(
        store, 0, c0.epoch, {},
        history=[history_entry(alice, "h-alice", T0, T0 + 2 * MIN), history_entry(bob, "h-bob", T0, T0 + 4 * MIN)],
    )
    assert await put(store, 1, c1.epoch, {}, history=[history_entry(carol, "h-carol", T0, T0 + 3 * MIN)])

    assert ids(await store.closed_sessions()) == ["h-bob", "h-carol", "h-alice"]
    assert all(r["status"] == "closed" for r in await store.closed_sessions())
    # bounds are inclusive
    assert ids(await store.closed_sessions(since_ms=T0 + 3 * MIN)) == ["h-bob", "h-carol"]
    assert ids(await store.closed_sessions(until_ms=T0 + 3 * MIN)) == ["h-carol", "h-alice"]
    assert ids(await store.closed_sessions(since_ms=T0 + 3 * MIN, until_ms=T0 + 3 * MIN)) == ["h-carol"]
    assert ids(await store.closed_sessions(limit=2)) == ["h-bob", "h-carol"]
    assert await store.closed_sessions(since_ms=T0 + 5 * MIN) == []

    # a later revision replaces the entry
    amended = history_entry(alice, "h-alice", T0, T0 + 6 * MIN)
    assert await put(store, 0, c0.epoch, {}, history=[amended])
    newest = await store.closed_sessions(limit=1)
    assert ids(newest) == ["h-alice"]
    assert newest[0]["end"] == format_ms(T0 + 6 * MIN)
    assert len(await store.closed_sessions()) == 3


@contract
async def test_a_refused_commit_writes_no_history(backend: Backend) -> None:
    old_owner, new_owner = backend.store(), backend.store()
    old = await old_owner.claim(0)
    assert await put(old_owner, 0, old.epoch, {}, offsets={"events": 4})
    entry = history_entry(user_key("alice"), "h-alice", T0, T0 + MIN)
    assert not await put(old_owner, 0, old.epoch, {}, offsets={"events": 4}, history=[entry])
    await new_owner.claim(0)
    with pytest.raises(FencedError):
        await put(old_owner, 0, old.epoch, {}, offsets={"events": 5}, history=[entry])
    assert await new_owner.closed_sessions() == []


# -- Redis only -----------------------------------------------------------------------------


@redis_only
async def test_redis_key_layout_matches_keys_module(backend: Backend) -> None:
    store = await _populate(backend)
    k = backend.keys
    epoch0 = (await store.claim(0)).epoch
    alice, bob = user_key("alice"), user_key("bob")
    [state] = await store.load(0, [alice], None, 0)
    session = state.open  # closed as the worker closes it: the session it loaded
    assert session is not None
    session.close(ENDED, T0 + 9 * MIN)
    state.open, state.closed = None, [session]
    assert await put(
        store, 0, epoch0, {alice: state},
        due={alice: T0 + 24 * MIN, bob: T0 + 7 * MIN}, offsets={"events": 12}, outgoing=[b"msg"],
        history=[history_entry(alice, "shop-alice", T0 + MIN, T0 + 9 * MIN)],
    )
    # the due entry of a key written without one is dropped: bob has none now
    epoch5 = (await store.claim(5)).epoch
    carol = user_key("carol")
    [carol_state] = await store.load(5, [carol], None, 0)
    assert await put(store, 5, epoch5, {carol: carol_state}, due={carol: T0 + 11 * MIN})

    dump = await dump_keys(store.client, backend.prefix)

    manual, anon = ("shop", "s", "manual-0001"), ("shop", "s", "anon-0001")
    expected = {
        k.shards: b"set",
        k.meta(0): b"hash",
        k.meta(5): b"hash",
        k.due(0): b"zset",
        k.due(5): b"zset",
        k.open(0): b"hash",
        k.open(5): b"hash",
        k.index(0): b"hash",
        k.index(5): b"hash",
        k.outbox(0): b"list",
        k.history(0): b"zset",
        k.history_record(0, "shop-alice:shop"): b"string",
        k.states(0): b"hash",
        k.states(5): b"hash",
        k.who(0): b"zset",
        k.who(5): b"zset",
    }
    # the sessions' event logs: one hash per partition, one field per chunk
    expected[k.log(0)] = expected[k.log(5)] = b"hash"
    assert {key.decode(): kind for key, (kind, _) in dump.items()} == expected

    for raw in dump:
        key = raw.decode()
        assert key.startswith(backend.prefix + ":")
        if key == k.shards:
            continue
        partition = 0 if key.startswith(k.shard(0)) else 5
        assert key.startswith(f"{backend.prefix}:{{p{partition}}}:"), key
        assert key_slot(raw) == key_slot(k.meta(partition).encode()), key

    def value(key: str) -> Any:
        return dump[key.encode()][1]

    assert value(k.shards) == {b"0", b"5"}
    meta0 = value(k.meta(0))
    assert meta0[b"epoch"] == str(epoch0).encode()
    assert meta0[b"off:events"] == b"12"
    assert meta0[b"clock_ms"] == str(T0).encode()
    # a deadline for a key whose state the commit leaves as it is: written all the same
    assert value(k.due(0)) == [(keyid(bob).encode(), float(T0 + 7 * MIN)),
                               (keyid(alice).encode(), float(T0 + 24 * MIN))]
    assert value(k.due(5)) == [(keyid(carol).encode(), float(T0 + 11 * MIN))]
    assert value(k.open(0)) == {
        b"shop-bob:shop": keyid(bob).encode(),
        b"blog-alice:blog": keyid(user_key("alice", "blog")).encode(),
    }
    assert value(k.open(5)) == {
        b"manual-0001:shop": keyid(manual).encode(),
        b"shop-carol:shop": keyid(carol).encode(),
        b"anon-0001:shop": keyid(anon).encode(),
    }
    assert value(k.index(0)) == {
        keyid(bob).encode(): b"8:4:shop-bobshopbob",
        keyid(user_key("alice", "blog")).encode(): b"10:4:blog-aliceblogalice",
    }
    assert value(k.index(5))[keyid(anon).encode()] == b"9:4:anon-0001shop"
    # who: one member per open session, <len>:<project><len>:<user><session id>, sorted
    assert value(k.who(0)) == [(b"4:blog5:aliceblog-alice", 0.0), (b"4:shop3:bobshop-bob", 0.0)]
    assert value(k.who(5)) == [(b"4:shop0:anon-0001", 0.0), (b"4:shop5:alicemanual-0001", 0.0),
                               (b"4:shop5:carolshop-carol", 0.0)]
    assert value(k.meta(0))[b"who"] == b"1"
    assert value(k.outbox(0)) == [b"msg"]
    assert value(k.history(0)) == [(b"shop-alice:shop", float(T0 + 9 * MIN))]
    assert orjson.loads(value(k.history_record(0, "shop-alice:shop")))["session_id"] == "shop-alice"
    assert set(value(k.states(0))) == {keyid(alice).encode(), keyid(bob).encode(),
                                         keyid(user_key("alice", "blog")).encode()}
    assert set(value(k.states(5))) == {keyid(manual).encode(), keyid(carol).encode(), keyid(anon).encode()}
    head = orjson.loads(value(k.states(0))[keyid(alice).encode()])
    assert isinstance(head, list)  # a row head, filed under its keyid
    stored = codec.key_state_from_row(head, alice)
    assert stored.open is None
    assert [c.session_id for c in stored.closed] == ["shop-alice"]
    # each head names its sessions' logs: handle and number of chunks, every chunk in the
    # partition's log hash, and nothing else there
    for partition in (0, 5):
        named = set()
        for kid, head in value(k.states(partition)).items():
            data = orjson.loads(head)
            sessions = codec.key_state_from_row(data, parse_keyid(kid.decode())).sessions()
            assert len(data[2]) == len(sessions)
            named |= {f"{handle}.{n:x}".encode() for handle, chunks in data[2] for n in range(chunks)}
        assert named and set(value(k.log(partition))) == named


@redis_only
async def test_redis_project_and_user_names_with_colons_stay_apart(backend: Backend) -> None:
    store = backend.store()
    claim = await store.claim(0)
    a: SessionKey = ("a", "u", "b:c")  # project "a", user "b:c"
    b: SessionKey = ("a:b", "u", "c")  # project "a:b", user "c"
    assert keyid(a) != keyid(b)
    assert await put(store, 0, claim.epoch, {a: open_state(a, "s-a"), b: open_state(b, "s-b")})
    assert ids(await store.open_sessions(project="a", user_id="b:c")) == ["s-a"]
    assert ids(await store.open_sessions(project="a:b", user_id="c")) == ["s-b"]
    assert who_member("s", "a", "b:c") != who_member("s", "a:b", "c")
    assert not who_member("s", "a:b", "c").startswith(who_prefix("a"))


@redis_only
async def test_redis_index_sets_of_earlier_versions_move_into_who_on_claim(backend: Backend) -> None:
    """Earlier versions indexed open sessions in a set per project and one per user; the
    first claim of a partition whose meta has no ``who`` moves them into the zset."""
    store = await _populate(backend)
    k, client = backend.keys, store.client
    now = await dump_keys(client, backend.prefix)
    for partition in (0, 5):  # back to the earlier layout
        for member in await client.zrange(k.who(partition), 0, -1):
            sid, project, user = parse_who_member(member)
            await client.sadd(k.legacy_project(partition, project), sid)
            if user:
                await client.sadd(k.legacy_user(partition, project, user), sid)
        await client.delete(k.who(partition))
        await client.hdel(k.meta(partition), "who")
    assert await client.exists(k.legacy_user(5, "shop", "alice"))

    upgraded = backend.store()
    for partition in (0, 5):
        await upgraded.claim(partition)
    after = await dump_keys(client, backend.prefix)
    for key in (k.meta(0).encode(), k.meta(5).encode()):  # the claims bumped the epochs
        after[key][1].pop(b"epoch")
        now[key][1].pop(b"epoch")
    assert after == now
    assert ids(await upgraded.open_sessions(project="shop", user_id="alice")) == ["manual-0001", "shop-alice"]
    # moved once: a later claim finds who and leaves it
    await client.zadd(k.who(0), {"marker": 0})
    await upgraded.claim(0)
    assert await client.zscore(k.who(0), "marker") == 0


@redis_only
async def test_redis_fenced_commit_is_all_or_nothing(backend: Backend) -> None:
    """A big commit refused for its epoch leaves every key as it was."""
    old_owner = backend.store()
    old = await old_owner.claim(0)
    keys = [user_key(f"user-{i}") for i in range(50)]
    assert await put(
        old_owner, 0, old.epoch, {k: open_state(k, f"s{i}") for i, k in enumerate(keys)},
        due=dict.fromkeys(keys, 10), offsets={"events": 1}, outgoing=[b"m"] * 10,
    )
    await backend.store().claim(0)
    before = await dump_keys(old_owner.client, backend.prefix)

    refused = Commit(
        states={**dict.fromkeys(keys[:25]), **{user_key(f"new-{i}"): open_state(user_key(f"new-{i}"), f"n{i}") for i in range(25)}},
        due_ms={user_key(f"new-{i}"): 20 for i in range(25)},
        offsets={"events": 2},
        clock_ms=T0 + 1,
        outgoing=[b"x"] * 600,
        acked=10,
    )
    with pytest.raises(FencedError):
        await old_owner.commit(0, old.epoch, refused)

    assert await dump_keys(old_owner.client, backend.prefix) == before


@redis_only
async def test_redis_history_is_trimmed_by_age_and_count(backend: Backend) -> None:
    assert backend.url is not None
    store = RedisStore.from_url(backend.url, prefix=backend.prefix, history_retention_ms=10 * MIN, history_max=3)
    try:
        claim = await store.claim(0)
        entries = [history_entry(user_key(f"u{i}"), f"h{i}", T0, T0 + i * MIN) for i in range(6)]
        assert await put(store, 0, claim.epoch, {}, clock_ms=T0 + 10 * MIN, history=entries)
        # ends before clock - retention (T0) go; then the oldest beyond 3
        assert ids(await store.closed_sessions()) == ["h5", "h4", "h3"]
        assert await put(store, 0, claim.epoch, {}, clock_ms=T0 + 14 * MIN)
        assert ids(await store.closed_sessions()) == ["h5", "h4"]
        assert await store.get_closed_session("h4") is not None
        assert await store.get_closed_session("h3") is None
        dump = await dump_keys(store.client, backend.prefix)
        assert {k for k in dump if b":h:" in k} == {
            backend.keys.history_record(0, f"h{i}:shop").encode() for i in (4, 5)
        }
    finally:
        await store.close()


@contract
async def test_project_and_user_names_beyond_ascii_and_with_control_characters(backend: Backend) -> None:
    """Names are any JSON strings: non-ASCII ones (whose length in bytes is not their
    length in characters) and ones holding the index's separator are found like any."""
    store = backend.store()
    claim = await store.claim(0)
    named = {
        "cafe-0001": user_key("zoë", "café"),
        "jp-00001": user_key("ユーザー", "プロジェクト"),
        "sep-0001": user_key("u\x1fv", "p\x1fq"),
        "sep-0002": user_key("v", "p\x1fq\x1fu"),
    }
    assert await put(store, 0, claim.epoch, {key: open_state(key, sid) for sid, key in named.items()})
    for sid, (project, _, user) in named.items():
        assert ids(await store.open_sessions(project=project)) == [sid]
        assert ids(await store.open_sessions(project=project, user_id=user)) == [sid]
        assert ids(await store.open_sessions(user_id=user)) == [sid]
        found = await store.get_session(sid, project)
        assert found is not None
        assert (found["project"], found["user_id"]) == (project, user)
    assert await store.open_sessions(project="p\x1fq", user_id="v") == []
    assert await store.open_sessions(project="p", user_id="q\x1fu\x1fv") == []
    assert len(await store.open_sessions()) == len(named)

    # and they leave the indexes when their sessions close
    for key in named.values():
        [state] = await store.load(0, [key], None, 0)
        assert await put(store, 0, claim.epoch, {key: closed(state, T0 + 10 * MIN)})
    assert await store.open_sessions() == []
    for _, (project, _, user) in named.items():
        assert await store.open_sessions(project=project, user_id=user) == []


# -- revisions of client-chosen session ids ---------------------------------------------


@contract
async def test_revision_marks_are_shared_by_partitions_and_only_go_up(backend: Backend) -> None:
    store = backend.store()
    assert await store.revisions([("s-1", "p")]) == {}
    await store.raise_revisions({("s-1", "p"): 2, ("s-1", "q"): 5, ("a:b", "p"): 1}, T0)
    await store.raise_revisions({("s-1", "p"): 1, ("s-1", "q"): 7}, T0 + 10)  # a lower one is ignored
    other = backend.store()  # another worker's handle sees them
    assert await other.revisions([("s-1", "p"), ("s-1", "q"), ("a:b", "p"), ("none", "p")]) == {
        ("s-1", "p"): 2, ("s-1", "q"): 7, ("a:b", "p"): 1,
    }
    await store.raise_revisions({}, T0 + 20)
    assert await store.revisions([]) == {}
    # past the retention (30 days by default) from their last write, marks are forgotten
    await store.raise_revisions({("new", "p"): 1}, T0 + 5 + 30 * 86_400_000)
    assert await other.revisions([("s-1", "p"), ("s-1", "q"), ("a:b", "p"), ("new", "p")]) == {
        ("s-1", "p"): 2, ("s-1", "q"): 7, ("new", "p"): 1,
    }
