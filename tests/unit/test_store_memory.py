"""The in-memory store: what its twin-ness rests on, fast and without Redis.

The whole store contract runs against both backends in
``tests/integration/test_store_contract.py``; this module checks what only the
in-memory one could get wrong: that it hands out copies, never its own objects,
and that it keeps states serialized as Redis does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest

from pipeline.core.event import Event, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState, Session
from pipeline.exceptions import FencedError
from pipeline.store import codec
from pipeline.store.base import Commit
from pipeline.store.keys import keyid
from pipeline.store.memory import MemoryStore

T0 = 1_764_237_600_000
ALICE: SessionKey = ("shop", "u", "alice")
BOB: SessionKey = ("shop", "u", "bob")


def state(key: SessionKey, session_id: str, at_ms: int = T0) -> KeyState:
    project, _, user = key
    ev = Event(type="session", time_ms=at_ms, arrival_ms=at_ms, project=project, user_id=user, id="e1")
    session = Session.begin(session_id, ev)
    session.add(ev, SessionRules())
    return KeyState(key, open=session)


def commit(**fields: Any) -> Commit:
    fields.setdefault("states", {})
    fields.setdefault("due_ms", {})
    fields.setdefault("offsets", {})
    fields.setdefault("clock_ms", T0)
    return Commit(**fields)


def run(body: Callable[[MemoryStore], Awaitable[None]]) -> None:
    asyncio.run(body(MemoryStore()))


def test_states_are_kept_serialized_and_loaded_as_copies() -> None:
    async def body(store: MemoryStore) -> None:
        claim = await store.claim(0)
        original = state(ALICE, "s1")
        assert await store.commit(0, claim.epoch, commit(states={ALICE: original}, due_ms={ALICE: 5}))

        blob = store.shards[0].states[keyid(ALICE)]
        assert isinstance(blob, bytes)
        assert orjson.loads(blob) == codec.to_state(original)

        original.open.event_count = 99  # type: ignore[union-attr]
        [first] = await store.load(0, [ALICE], None, 0)
        assert first is not original
        assert first.open is not None and first.open.event_count == 1
        first.open.event_count = 42
        [again] = await store.load(0, [ALICE], None, 0)
        assert again.open is not None and again.open.event_count == 1

    run(body)


def test_claim_offsets_and_outbox_are_copies() -> None:
    async def body(store: MemoryStore) -> None:
        claim = await store.claim(0)
        assert await store.commit(0, claim.epoch, commit(offsets={"events": 3}, outgoing=[b"a"]))
        resumed = await store.claim(0)
        resumed.offsets["events"] = 100
        box = await store.outbox(0)
        box.append(b"b")
        assert store.shards[0].offsets == {"events": 3}
        assert await store.outbox(0) == [b"a"]
        assert (await store.claim(0)).offsets == {"events": 3}

    run(body)


def test_commit_keeps_the_callers_lists_untouched() -> None:
    async def body(store: MemoryStore) -> None:
        claim = await store.claim(0)
        outgoing = [b"a", b"b"]
        assert await store.commit(0, claim.epoch, commit(outgoing=outgoing))
        outgoing.append(b"c")
        assert await store.outbox(0) == [b"a", b"b"]
        assert await store.commit(0, claim.epoch, commit(acked=1))
        assert outgoing == [b"a", b"b", b"c"]
        assert await store.outbox(0) == [b"b"]

    run(body)


def test_reads_of_unknown_partitions_are_empty_and_create_nothing() -> None:
    async def body(store: MemoryStore) -> None:
        assert await store.load(7, [ALICE], T0, 10) == []
        assert await store.outbox(7) == []
        assert await store.open_sessions() == []
        assert await store.get_session("s1") is None
        assert store.shards == {}

    run(body)


def test_fencing_and_the_offset_guard() -> None:
    async def body(store: MemoryStore) -> None:
        with pytest.raises(FencedError, match="never claimed"):
            await store.commit(0, 0, commit())
        old = await store.claim(0)
        assert await store.commit(0, old.epoch, commit(states={ALICE: state(ALICE, "s1")}, offsets={"events": 1}))
        new = await store.claim(0)
        with pytest.raises(FencedError, match="stale"):
            await store.commit(0, old.epoch, commit(states={BOB: state(BOB, "s2")}))
        assert not await store.commit(0, new.epoch, commit(states={BOB: state(BOB, "s2")}, offsets={"events": 1}))
        assert [r["session_id"] for r in await store.open_sessions()] == ["s1"]

    run(body)


def test_due_keys_tie_break_by_keyid_like_a_redis_sorted_set() -> None:
    async def body(store: MemoryStore) -> None:
        claim = await store.claim(0)
        keys = [("shop", "u", name) for name in ("carol", "alice", "bob")]
        states = {k: state(k, f"s-{k[2]}") for k in keys}
        assert await store.commit(0, claim.epoch, commit(states=states, due_ms=dict.fromkeys(keys, 10)))
        assert [s.key[2] for s in await store.load(0, [], 10, 10)] == ["alice", "bob", "carol"]
        assert [s.key[2] for s in await store.load(0, [], 10, 2)] == ["alice", "bob"]

    run(body)


def test_release_and_close_are_harmless() -> None:
    async def body(store: MemoryStore) -> None:
        claim = await store.claim(0)
        store.release(0)
        assert await store.commit(0, claim.epoch, commit(states={ALICE: state(ALICE, "s1")}))
        await store.close()
        assert [r["session_id"] for r in await store.open_sessions()] == ["s1"]

    run(body)
