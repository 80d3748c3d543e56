"""The Redis commit's own workings, beyond the store contract.

:meth:`RedisStore.commit` leaves out of the index checks the keys whose entry is
unchanged since its last applied commit, trusting what it kept while Redis holds
that commit's token. These tests check that this writes exactly what checking
every key writes (over random batches, with refused, skipped and foreign
commits between), that every key is checked when the token moved on, and that the entries kept stay bounded and are dropped when
they cannot be trusted. Also: long event logs go in chunks, in order.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
from test_store_contract import dump_keys

from pipeline.core.event import Event, SessionKey
from pipeline.core.rules import SessionRules
from pipeline.core.session import ENDED, KeyState, Session
from pipeline.exceptions import FencedError
from pipeline.store import codec
from pipeline.store.base import Commit
from pipeline.store.keys import keyid, parse_index_entry, parse_who_member, who_prefix, who_range
from pipeline.store.redis import RedisStore
from tests.unit.helpers import earlier_head

T0 = 1_764_237_600_000
RULES = SessionRules()


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def prefix() -> str:
    return f"sz-commit-{uuid.uuid4().hex[:12]}"


def event(key: SessionKey, at_ms: int, n: int, user: str | None = None) -> Event:
    project, kind, ident = key
    return Event(
        type="session" if n == 0 else "log", time_ms=at_ms, arrival_ms=at_ms, project=project,
        user_id=ident if kind == "u" else user, session_id=ident if kind == "s" else None,
        id=f"{ident}-{at_ms}-{n}", message=f"m{n}", partition=0, offset=n,
    )


def opened(key: SessionKey, session_id: str, at_ms: int, user: str | None = None) -> Session:
    ev = event(key, at_ms, 0, user)
    session = Session.begin(session_id, ev)
    session.add(ev, RULES)
    return session


class Spy:
    """Records, for every read a commit makes under its WATCH, the keys whose index
    entries it reads."""

    def __init__(self, store: RedisStore) -> None:
        self.reads: list[list[str]] = []
        inner = store._read

        async def read(pipe: Any, partition: int, topics: list[str], checked: list[str],
                       *rest: Any) -> Any:
            self.reads.append(list(checked))
            return await inner(pipe, partition, topics, checked, *rest)

        store._read = read  # type: ignore[method-assign]

    def checked(self) -> list[list[str]]:
        return self.reads


async def dump(store: RedisStore, name: str) -> dict[bytes, Any]:
    """Every key under the store's prefix (renamed to ``name``), with its type and value."""
    old, new = store.keys.prefix.encode(), name.encode()
    found = await dump_keys(store.client, store.keys.prefix)
    return {key.replace(old, new, 1): value for key, value in found.items()}


# -- the same data as checking every key ------------------------------------------------


async def drive(url: str, store: RedisStore, seed: int, steps: int) -> None:
    """Random batches over a few keys, committed with tokens as the worker does, with
    now and then a skipped commit (offsets applied already), a claim again, and another
    writer with the same epoch deleting a key behind the store's back."""
    rng = random.Random(seed)
    keys: list[SessionKey] = [("shop", "u", f"u{i}") for i in range(6)]
    keys += [("blog", "u", f"u{i}") for i in range(3)]
    keys += [("shop", "s", f"c{i}") for i in range(5)]
    held: dict[SessionKey, KeyState] = {}
    epoch = (await store.claim(0)).epoch
    token, offset, n = "", 0, 0
    victim = keys[0]
    for step in range(steps):
        clock = T0 + step * 60_000
        roll = rng.random()
        if roll < 0.06 and offset > 0:  # applied already: nothing written, the token still is
            skipped = Commit(states={}, due_ms={}, offsets={"events": offset}, clock_ms=clock,
                             token=f"t{step}", expect=(token,))
            assert not await store.commit(0, epoch, skipped)
            token = f"t{step}"
            continue
        if roll < 0.1:
            epoch = (await store.claim(0)).epoch
        if roll > 0.9 and held:  # another writer (same epoch) deletes a key
            other = RedisStore.from_url(url, prefix=store.keys.prefix)
            try:
                victim = rng.choice(sorted(held))
                offset += 1
                foreign = Commit(states={victim: None}, due_ms={}, offsets={"events": offset},
                                 clock_ms=clock, token=f"x{step}", expect=(token,))
                assert await other.commit(0, epoch, foreign)
            finally:
                await other.close()
            token = f"x{step}"
        changes: dict[SessionKey, KeyState | None] = {}
        if token.startswith("x"):  # the deleted key again, its entry as the store kept it
            changes[victim] = held[victim]
        for key in rng.sample(keys, rng.randint(1, len(keys))):
            if key in changes:
                continue
            n += 1
            st = held.get(key)
            user = rng.choice(["ann", "bob", None]) if key[1] == "s" else None
            r = rng.random()
            if st is None:
                st = held[key] = KeyState(key, open=opened(key, f"{key[2]}-{n}", clock, user))
            elif st.open is not None and r < 0.4:
                st.open.add(event(key, clock, n, st.open.user_id), RULES)
            elif st.open is not None and r < 0.55:
                st.open.close(ENDED, clock)
                st.closed.append(st.open)
                st.open = None
            elif st.open is not None and r < 0.7:
                st.open.user_id = rng.choice(["ann", "bob", "cy"])
            elif r < 0.8:
                del held[key]
                st = None
            elif st.open is not None:  # closes, and a new session opens, in one batch
                st.open.close(ENDED, clock)
                st.closed.append(st.open)
                st.open = opened(key, f"{key[2]}-{n}", clock, user)
            else:
                st.open = opened(key, f"{key[2]}-{n}", clock, user)
            changes[key] = st
        offset += 1
        batch = Commit(
            states=changes,
            due_ms={k: clock + 1000 for k, v in changes.items() if v is not None and rng.random() < 0.8},
            offsets={"events": offset}, clock_ms=clock, token=f"t{step}", expect=(token,),
        )
        assert await store.commit(0, epoch, batch)
        token = f"t{step}"
        await audit(store, held)


async def audit(store: RedisStore, held: dict[SessionKey, KeyState]) -> None:
    """The query indexes hold exactly the open sessions of ``held``."""
    client, k = store.client, store.keys
    want = {
        keyid(key): (st.open.session_id, st.open.project, st.open.user_id or "")
        for key, st in held.items() if st.open is not None
    }
    idx = await client.hgetall(k.index(0))
    assert {kid.decode(): parse_index_entry(e) for kid, e in idx.items()} == want
    opened = await client.hgetall(k.open(0))
    assert {ref.decode(): kid.decode() for ref, kid in opened.items()} == {
        f"{sid}:{project}": kid for kid, (sid, project, _) in want.items()}
    who = {parse_who_member(m) for m in await client.zrange(k.who(0), 0, -1)}
    assert who == set(want.values())
    for project in ("shop", "blog"):
        low, high = who_range(who_prefix(project))
        members = {parse_who_member(m)[0] for m in await client.zrangebylex(k.who(0), low, high)}
        assert members == {sid for sid, p, _ in want.values() if p == project}
        for user in ("ann", "bob", "cy", *(f"u{i}" for i in range(6))):
            low, high = who_range(who_prefix(project, user))
            members = {parse_who_member(m)[0] for m in await client.zrangebylex(k.who(0), low, high)}
            assert members == {sid for sid, p, u in want.values() if p == project and u == user}


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_kept_index_entries_write_what_checking_every_key_writes(redis_server: Any, seed: int) -> None:
    async def body() -> None:
        kept = RedisStore.from_url(redis_server.url, prefix=prefix())
        every = RedisStore.from_url(redis_server.url, prefix=prefix(), index_memory=0)
        kept_spy, every_spy = Spy(kept), Spy(every)
        try:
            await drive(redis_server.url, kept, seed, 60)
            await drive(redis_server.url, every, seed, 60)
            assert await dump(kept, "p") == await dump(every, "p")
            # and the kept entries were used: fewer keys checked
            checked_kept = sum(len(c) for c in kept_spy.checked())
            checked_every = sum(len(c) for c in every_spy.checked())
            assert checked_kept < checked_every
        finally:
            await kept.close()
            await every.close()

    run(body)


# -- the token moved on ----------------------------------------------------------------


def test_a_commit_whose_kept_entries_are_stale_is_refused_and_goes_again(redis_server: Any) -> None:
    async def body() -> None:
        name = prefix()
        store = RedisStore.from_url(redis_server.url, prefix=name)
        other = RedisStore.from_url(redis_server.url, prefix=name)
        spy = Spy(store)
        try:
            key: SessionKey = ("shop", "u", "alice")
            epoch = (await store.claim(0)).epoch
            state = KeyState(key, open=opened(key, "s1", T0))
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 1}, clock_ms=T0, token="a", expect=("",)))
            # another handle, same epoch: the key's session closes there
            ended = codec.key_state_from_state(codec.to_state(state))
            assert ended.open is not None
            ended.open.close(ENDED, T0 + 1)
            ended.closed, ended.open = [ended.open], None
            assert await other.commit(0, epoch, Commit(
                states={key: ended}, due_ms={}, offsets={"events": 2}, clock_ms=T0 + 1,
                token="b", expect=("a",)))
            assert await store.get_session("s1") is None

            # the store's own state for the key is unchanged: its entry too, as it kept it
            state.open.add(event(key, T0 + 2, 1), RULES)  # type: ignore[union-attr]
            spy.reads.clear()
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 3}, clock_ms=T0 + 2,
                token="c", expect=("b",)))
            # first without the key; Redis holding another token than the one kept, then
            # with every key checked
            assert spy.checked() == [[], [keyid(key)]]
            found = await store.get_session("s1")
            assert found is not None and found["session_id"] == "s1"
            assert [r["session_id"] for r in await store.open_sessions(project="shop", user_id="alice")] == ["s1"]
            [loaded] = await store.load(0, [key], None, 0)
            assert codec.to_state(loaded) == codec.to_state(state)
        finally:
            await store.close()
            await other.close()

    run(body)


def test_unchanged_entries_are_checked_once_then_left_out(redis_server: Any) -> None:
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        spy = Spy(store)
        try:
            keys: list[SessionKey] = [("shop", "s", f"c{i}") for i in range(3)]
            states = {k: KeyState(k, open=opened(k, f"s{i}", T0, "ann")) for i, k in enumerate(keys)}
            epoch = (await store.claim(0)).epoch

            async def commit(changes: dict[SessionKey, KeyState | None], offset: int) -> None:
                assert await store.commit(0, epoch, Commit(
                    states=changes, due_ms={}, offsets={"events": offset}, clock_ms=T0 + offset,
                    token=f"t{offset}", expect=(f"t{offset - 1}" if offset > 1 else "",)))

            await commit(dict(states), 1)
            for k in keys:
                states[k].open.add(event(k, T0 + 2, 2, "ann"), RULES)  # type: ignore[union-attr]
            await commit(dict(states), 2)
            moved = states[keys[1]].open
            assert moved is not None
            moved.user_id = "bob"
            await commit(dict(states), 3)
            await commit({keys[2]: None}, 4)
            assert spy.checked() == [[keyid(k) for k in keys], [], [keyid(keys[1])], [keyid(keys[2])]]
            assert [r["session_id"] for r in await store.open_sessions(user_id="bob")] == ["s1"]
            assert [r["session_id"] for r in await store.open_sessions()] == ["s0", "s1"]

            # claimed again: nothing kept, every key checked
            epoch = (await store.claim(0)).epoch
            await commit({keys[0]: states[keys[0]]}, 5)
            assert spy.checked()[-1] == [keyid(keys[0])]
            # released: the same
            await commit({keys[0]: states[keys[0]]}, 6)
            assert spy.checked()[-1] == []
            store.release(0)
            await commit({keys[0]: states[keys[0]]}, 7)
            assert spy.checked()[-1] == [keyid(keys[0])]
        finally:
            await store.close()

    run(body)


def test_a_commit_that_raises_or_was_applied_already_keeps_nothing(redis_server: Any) -> None:
    async def body() -> None:
        name = prefix()
        store = RedisStore.from_url(redis_server.url, prefix=name)
        spy = Spy(store)
        try:
            key: SessionKey = ("shop", "s", "c1")
            state = KeyState(key, open=opened(key, "s1", T0, "ann"))
            epoch = (await store.claim(0)).epoch
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 1}, clock_ms=T0, token="a",
                expect=("",)))
            # the session's user changes in a batch applied already: nothing written
            assert state.open is not None
            state.open.user_id = "bob"
            assert not await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 1}, clock_ms=T0, token="b",
                expect=("a",)))
            assert [r["session_id"] for r in await store.open_sessions(user_id="ann")] == ["s1"]
            # the same change again, applied this time: the entry it did not write is not kept
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 2}, clock_ms=T0, token="c",
                expect=("b",)))
            assert await store.open_sessions(user_id="ann") == []
            assert [r["session_id"] for r in await store.open_sessions(user_id="bob")] == ["s1"]
            assert spy.checked() == [[keyid(key)], [keyid(key)], [keyid(key)]]

            # fenced: refused, and nothing kept either
            other = RedisStore.from_url(redis_server.url, prefix=name)
            await other.claim(0)
            await other.close()
            with pytest.raises(FencedError):
                await store.commit(0, epoch, Commit(
                    states={key: state}, due_ms={}, offsets={"events": 3}, clock_ms=T0,
                    token="d", expect=("c",)))
            assert store._indexed == {}
            # without a token: none kept (the next commit could not tell)
            epoch = (await store.claim(0)).epoch
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={}, offsets={"events": 4}, clock_ms=T0))
            assert store._indexed == {}
        finally:
            await store.close()

    run(body)


def test_the_entries_kept_are_bounded(redis_server: Any) -> None:
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix(), index_memory=8)
        try:
            keys: list[SessionKey] = [("shop", "u", f"u{i}") for i in range(20)]
            epoch = (await store.claim(0)).epoch
            assert await store.commit(0, epoch, Commit(
                states={k: KeyState(k, open=opened(k, f"s{i}", T0)) for i, k in enumerate(keys)},
                due_ms={}, offsets={"events": 1}, clock_ms=T0, token="a", expect=("",)))
            token, kept = store._indexed[0]
            assert token == "a"
            assert 0 < len(kept) <= 8
            assert set(kept) <= {keyid(k) for k in keys[12:]}  # the newest stay
            assert len(await store.open_sessions()) == 20
        finally:
            await store.close()

    run(body)


# -- event logs ----------------------------------------------------------------------------


def log_of(head: bytes) -> list[list[Any]]:
    """The ``[handle, chunks]`` of each session of a stored head (a row: its third item)."""
    logs: list[list[Any]] = orjson.loads(head)[2]
    return logs


def test_a_long_event_log_is_appended_as_one_chunk_per_batch_in_order(redis_server: Any) -> None:
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        try:
            key: SessionKey = ("shop", "u", "alice")
            session = opened(key, "s1", T0)
            for n in range(1, 1300):  # past the 1000-event cap: drop marks too
                session.add(event(key, T0 + n, n), RULES)
            state = KeyState(key, open=session)
            expected = codec.to_state(state)
            items = len(session.log)
            epoch = (await store.claim(0)).epoch
            assert await store.commit(0, epoch, Commit(
                states={key: state}, due_ms={key: T0 + 10**6}, offsets={"events": 1}, clock_ms=T0))
            [[handle, chunks]] = log_of(await store.client.hget(store.keys.states(0), keyid(key)))
            assert chunks == 1
            log = await store.client.hgetall(store.keys.log(0))
            assert list(log) == [f"{handle}.0".encode()]  # the batch's items, one JSON line each
            assert len(log[f"{handle}.0".encode()].split(b"\n")) == items > 1000
            [loaded] = await store.load(0, [key], None, 0)
            assert codec.to_state(loaded) == expected
            # a second batch appends a second chunk; the log replays both in order
            loaded.open.add(event(key, T0 + 5000, 5000), RULES)
            after = codec.to_state(loaded)
            assert await store.commit(0, epoch, Commit(
                states={key: loaded}, due_ms={key: T0 + 10**6}, offsets={"events": 2}, clock_ms=T0))
            assert log_of(await store.client.hget(store.keys.states(0), keyid(key))) == [[handle, 2]]
            assert await store.client.hlen(store.keys.log(0)) == 2
            [again] = await store.load(0, [key], None, 0)
            assert codec.to_state(again) == after
            assert await store.client.zscore(store.keys.due(0), keyid(key)) == T0 + 10**6
        finally:
            await store.close()

    run(body)


def test_a_commit_sent_again_after_it_applied_answers_already_applied(redis_server: Any) -> None:
    """A client that resends a commit whose reply it lost (redis-py's cluster client does
    after a connection error or a redirect) finds its own token: already applied, nothing
    written twice, no lost-writes alarm."""
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        try:
            key: SessionKey = ("shop", "u", "alice")
            state = KeyState(key, open=opened(key, "s1", T0))
            epoch = (await store.claim(0)).epoch

            def commit() -> Commit:
                return Commit(states={key: state}, due_ms={key: T0 + 10**6}, offsets={"events": 1},
                              clock_ms=T0, token="t-1", expect=("",))

            assert await store.commit(0, epoch, commit()) is True
            before = await dump(store, "p")
            assert await store.commit(0, epoch, commit()) is False
            assert await dump(store, "p") == before
        finally:
            await store.close()

    run(body)


# -- deadlines -------------------------------------------------------------------------


def test_a_deadline_that_moves_later_is_rewritten_once_early_by_more_than_half(redis_server: Any) -> None:
    """Each event moves its key's idle deadline later; Redis keeps the one it holds while
    that is at least half way from the stream clock to the real one (a key looked at too
    early is only looked at again, never closed late), and takes every other change."""
    async def body() -> None:
        name = prefix()
        store = RedisStore.from_url(redis_server.url, prefix=name)
        try:
            key: SessionKey = ("shop", "u", "alice")
            state = KeyState(key, open=opened(key, "s1", T0))
            epoch = (await store.claim(0)).epoch
            n = 0

            async def commit(clock: int, due: int | None) -> float | None:
                nonlocal n
                n += 1
                assert await store.commit(0, epoch, Commit(
                    states={key: state}, due_ms={key: due}, offsets={"events": n}, clock_ms=clock,
                    token=f"t{n}", expect=(f"t{n - 1}" if n > 1 else "",)))
                score: float | None = await store.client.zscore(store.keys.due(0), keyid(key))
                return score

            assert await commit(T0, T0 + 100_000) == T0 + 100_000
            # 60 s of the 100 s left: held
            assert await commit(T0 + 40_000, T0 + 140_000) == T0 + 100_000
            assert await commit(T0 + 50_000, T0 + 150_000) == T0 + 100_000
            # 20 s of the 100 s left: rewritten
            assert await commit(T0 + 80_000, T0 + 180_000) == T0 + 180_000
            # earlier than the one held: rewritten at once
            assert await commit(T0 + 80_000, T0 + 150_000) == T0 + 150_000
            # none: removed
            assert await commit(T0 + 90_000, None) is None
            assert await commit(T0 + 90_000, T0 + 190_000) == T0 + 190_000

            # Redis holding another commit's token: what this store wrote may not be there,
            # every deadline is written
            other = RedisStore.from_url(redis_server.url, prefix=name)
            try:
                n += 1
                assert await other.commit(0, epoch, Commit(
                    states={}, due_ms={key: T0 + 500_000}, offsets={"events": n},
                    clock_ms=T0 + 90_000, token=f"t{n}", expect=(f"t{n - 1}",)))
            finally:
                await other.close()
            assert await commit(T0 + 100_000, T0 + 200_000) == T0 + 200_000
            # claimed again: nothing kept, written
            epoch = (await store.claim(0)).epoch
            assert await commit(T0 + 110_000, T0 + 210_000) == T0 + 210_000
            assert await commit(T0 + 120_000, T0 + 220_000) == T0 + 210_000
        finally:
            await store.close()

    run(body)


# -- event logs: sessions dropped, copies, the layout before the log hash ---------------


def test_a_session_past_the_grace_takes_its_log_chunks_with_it(redis_server: Any) -> None:
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        try:
            alice: SessionKey = ("shop", "u", "alice")
            bob: SessionKey = ("shop", "u", "bob")
            epoch = (await store.claim(0)).epoch
            states = {alice: KeyState(alice, open=opened(alice, "s1", T0)),
                      bob: KeyState(bob, open=opened(bob, "s2", T0))}
            assert await store.commit(0, epoch, Commit(
                states=states, due_ms={}, offsets={"events": 1}, clock_ms=T0))
            session = states[alice].open
            assert session is not None
            session.add(event(alice, T0 + 1, 1), RULES)
            assert await store.commit(0, epoch, Commit(
                states={alice: states[alice]}, due_ms={}, offsets={"events": 2}, clock_ms=T0))
            assert await store.client.hlen(store.keys.log(0)) == 3
            # alice's session ends, and is forgotten past the grace: her key goes
            assert await store.commit(0, epoch, Commit(
                states={alice: None}, due_ms={}, offsets={"events": 3}, clock_ms=T0,
                dropped=[(alice, session)]))
            [[handle, chunks]] = log_of(await store.client.hget(store.keys.states(0), keyid(bob)))
            assert await store.client.hkeys(store.keys.log(0)) == [f"{handle}.0".encode()]
            assert chunks == 1
        finally:
            await store.close()

    run(body)


def test_a_session_the_store_did_not_hand_out_is_written_whole(redis_server: Any) -> None:
    """A commit's sessions are normally the ones the store loaded or that began since.
    A copy (rebuilt from its data) carries no log of what changed: its whole log is
    written, so nothing of it is lost."""
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        try:
            key: SessionKey = ("shop", "u", "alice")
            session = opened(key, "s1", T0)
            session.add(event(key, T0 + 1, 1), RULES)
            session.data, session.data_ms = {"plan": "pro"}, {"plan": T0}
            state = KeyState(key, open=session)
            copy = codec.key_state_from_state(codec.to_state(state))
            epoch = (await store.claim(0)).epoch
            assert await store.commit(0, epoch, Commit(
                states={key: copy}, due_ms={}, offsets={"events": 1}, clock_ms=T0))
            [loaded] = await store.load(0, [key], None, 0)
            assert codec.to_state(loaded) == codec.to_state(state)
        finally:
            await store.close()

    run(body)


def test_state_in_the_layout_before_the_log_hash_loads_and_moves_into_it(redis_server: Any) -> None:
    """A partition written when each session's log was a list of its own (a head without
    ``"l"``): its sessions load whole, and the next commit of a key moves their lists
    into the log hash; the lists of sessions dropped go too."""
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        k = store.keys
        try:
            alice: SessionKey = ("shop", "u", "alice")
            bob: SessionKey = ("shop", "u", "bob")
            states: dict[SessionKey, KeyState] = {}
            for key, sid in ((alice, "s1"), (bob, "s2")):
                session = opened(key, sid, T0)
                first = session.take_log()
                session.add(event(key, T0 + 1, 1), RULES)
                second = session.take_log()
                states[key] = KeyState(key, open=session)
                # as the earlier layout wrote it: the head alone, and a list of chunks
                await store.client.hset(k.states(0), keyid(key), earlier_head(states[key]))
                await store.client.rpush(
                    k.legacy_events(0, keyid(key), sid),
                    b"\n".join(map(orjson.dumps, first)), b"\n".join(map(orjson.dumps, second)))
            epoch = (await store.claim(0)).epoch
            loaded = {s.key: s for s in await store.load(0, [alice, bob], None, 0)}
            for key in (alice, bob):
                assert codec.to_state(loaded[key]) == codec.to_state(states[key])

            # alice is written: her list moves into the log hash, one chunk, then hers
            session = loaded[alice].open
            assert session is not None
            session.add(event(alice, T0 + 2, 2), RULES)
            expected = codec.to_state(loaded[alice])
            assert await store.commit(0, epoch, Commit(
                states={alice: loaded[alice]}, due_ms={}, offsets={"events": 1}, clock_ms=T0))
            assert not await store.client.exists(k.legacy_events(0, keyid(alice), "s1"))
            [[_, chunks]] = log_of(await store.client.hget(k.states(0), keyid(alice)))
            assert chunks == 2
            [again] = await RedisStore.from_url(redis_server.url, prefix=k.prefix).load(0, [alice], None, 0)
            assert codec.to_state(again) == expected
            # bob's session is dropped while still in its list: the list goes
            bob_session = loaded[bob].open
            assert bob_session is not None
            assert await store.commit(0, epoch, Commit(
                states={bob: None}, due_ms={}, offsets={"events": 2}, clock_ms=T0,
                dropped=[(bob, bob_session)]))
            assert not await store.client.exists(k.legacy_events(0, keyid(bob), "s2"))
        finally:
            await store.close()

    run(body)


def test_a_head_written_as_an_object_with_its_logs_loads_and_is_rewritten_as_a_row(
    redis_server: Any,
) -> None:
    """A head as the version before rows wrote it (a JSON object without the key, its
    sessions' logs named in ``"l"``) loads whole; the next commit of the key writes a row."""
    async def body() -> None:
        store = RedisStore.from_url(redis_server.url, prefix=prefix())
        k = store.keys
        try:
            alice: SessionKey = ("shop", "u", "alice")
            session = opened(alice, "s1", T0)
            first = session.take_log()
            state = KeyState(alice, open=session)
            await store.client.hset(k.log(0), "1.0.0", b"\n".join(map(orjson.dumps, first)))
            await store.client.hset(
                k.states(0), keyid(alice), earlier_head(state, [["1.0", 1]], with_key=False))
            epoch = (await store.claim(0)).epoch
            [loaded] = await store.load(0, [alice], None, 0)
            assert codec.to_state(loaded) == codec.to_state(state)
            assert loaded.open is not None
            loaded.open.add(event(alice, T0 + 1, 1), RULES)
            expected = codec.to_state(loaded)
            assert await store.commit(0, epoch, Commit(
                states={alice: loaded}, due_ms={}, offsets={"events": 1}, clock_ms=T0))
            head = orjson.loads(await store.client.hget(k.states(0), keyid(alice)))
            assert isinstance(head, list) and head[2] == [["1.0", 2]]
            [again] = await RedisStore.from_url(redis_server.url, prefix=k.prefix).load(0, [alice], None, 0)
            assert codec.to_state(again) == expected
        finally:
            await store.close()

    run(body)
