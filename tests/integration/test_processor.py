"""The partition processor on a real Redis: the scenarios of
``tests/unit/test_processor_memory.py`` (sessions open and close, idle close by the
stream clock, dead letters, re-routing, crash and replay, fencing, the outbox), each
with its own key prefix on the session's redis-server, plus what only Redis shows.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_processor_memory import (
    MIN,
    SCENARIOS,
    SEC,
    T0,
    Env,
    World,
    run,
)

from pipeline.core.session import KeyState
from pipeline.core.timefmt import format_ms
from pipeline.store.keys import Keys, keyid
from pipeline.store.redis import RedisStore


class RedisWorld:
    """State under one fresh key prefix; every ``open_store`` is a new client (a new worker)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"sz-proc-{uuid.uuid4().hex[:12]}"
        self.keys = Keys(self.prefix)
        self._opened: list[RedisStore] = []

    def open_store(self) -> RedisStore:
        store = RedisStore.from_url(self.url, prefix=self.prefix)
        self._opened.append(store)
        return store

    async def dump(self) -> dict[bytes, Any]:
        """Every key under the prefix with its value."""
        client = (self._opened[0] if self._opened else self.open_store()).client
        found: dict[bytes, Any] = {}
        async for key in client.scan_iter(match=f"{self.prefix}:*", count=1000):
            kind = await client.type(key)
            if kind == b"string":
                found[key] = await client.get(key)
            elif kind == b"hash":
                found[key] = await client.hgetall(key)
            elif kind == b"set":
                found[key] = await client.smembers(key)
            elif kind == b"zset":
                found[key] = await client.zrange(key, 0, -1, withscores=True)
            elif kind == b"list":
                found[key] = await client.lrange(key, 0, -1)
            else:
                raise AssertionError(f"unexpected type {kind!r} of {key!r}")
        return found

    async def snapshot(self) -> dict[bytes, Any]:
        """Everything but the fencing epochs (a new claim bumps them)."""
        found = await self.dump()
        for key, value in found.items():
            if key.endswith(b":meta"):
                value.pop(b"epoch", None)
        return found

    async def close(self) -> None:
        for store in self._opened:
            await store.close()
        self._opened.clear()


@pytest.fixture
def world(redis_server: Any) -> RedisWorld:
    return RedisWorld(redis_server.url)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_processor(world: World, scenario: Callable[[World], Awaitable[None]]) -> None:
    run(world, scenario)


# -- Redis only ------------------------------------------------------------------------


def test_live_state_in_redis_follows_the_sessions(world: RedisWorld) -> None:
    async def scenario(world: RedisWorld) -> None:
        env = Env(world)
        proc = await env.processor()
        k = world.keys

        await proc.process([env.event("session", user="alice", at=0), env.event("session", user="bob", at=0)])
        dump = await world.dump()
        assert dump[k.meta(0).encode()][b"off:events"] == b"1"
        assert set(dump[k.open(0).encode()]) == {
            f"{r['session_id']}:{r['project']}".encode() for r in await proc.store.open_sessions()
        }
        assert len(dump[k.due(0).encode()]) == 2

        await proc.process([env.event("sessionend", user="alice", at=MIN)])
        [ended] = env.sink.sessions()
        dump = await world.dump()
        assert f"{ended['session_id']}:default".encode() not in dump[k.open(0).encode()]
        # alice's key keeps the closed session for the reopen grace
        [alice] = await proc.store.load(0, [("default", "u", "alice")], None, 0)
        assert isinstance(alice, KeyState) and alice.open is None
        assert [c.session_id for c in alice.closed] == [ended["session_id"]]
        assert [orjson.loads(b.split(b"\n", 1)[1]) for b in dump[k.outbox(0).encode()]] == [ended]

    run(world, scenario)  # type: ignore[arg-type]


def test_a_key_redis_lists_as_due_too_early_gets_the_engines_deadline(world: RedisWorld) -> None:
    """Redis may hold a deadline earlier than a key's real one (the store rewrites one
    that moved later only now and then). A key that does not fit the cache, listed as due
    by that early deadline, is looked at, left open, and given its real deadline; past
    that, it closes by timeout, once."""
    async def scenario(world: RedisWorld) -> None:
        env = Env(world)
        env.wall.advance(60 * MIN)  # the events' times are not ahead of the wall clock
        store = world.open_store()
        alice = keyid(("default", "u", "alice"))
        proc = await env.processor(store=store, warm=True, cache_keys=2)
        for i in range(5):  # active every 30 s for 2 min
            await proc.process([env.event("session" if i == 0 else "usage", user="alice",
                                          at=i * 30 * SEC, id=f"a{i}")])
        due = world.keys.due(0)
        assert await store.client.zscore(due, alice) == T0 + 5 * MIN + 1  # her first deadline
        await proc.process([env.event("session", user="bob", at=2 * MIN + 1, id="b0"),
                            env.event("session", user="carol", at=2 * MIN + 2, id="c0")])
        assert not proc.complete and ("default", "u", "alice") not in proc.engine.states

        # the stream clock passes the deadline Redis holds, not hers
        await proc.process([env.event("usage", user="carol", at=5 * MIN + 10 * SEC, id="c1")])
        assert not [r for r in env.sink.sessions() if r["user_id"] == "alice"]
        assert await store.client.zscore(due, alice) == T0 + 7 * MIN + 1

        await proc.process([env.event("usage", user="carol", at=7 * MIN + 5 * SEC, id="c2")])
        [closed] = [r for r in env.sink.sessions() if r["user_id"] == "alice"]
        assert (closed["close_reason"], closed["event_count"]) == ("timeout", 5)
        assert closed["end"] == format_ms(T0 + 2 * MIN)

    run(world, scenario)  # type: ignore[arg-type]
