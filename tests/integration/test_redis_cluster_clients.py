"""Every Redis client of the project on the Redis Cluster: the factory finds the cluster
by itself (``SESSIONIZER_REDIS_CLUSTER=auto``), ``sessions live|show`` and ``status``
read the partitions' state from the masters that hold it."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis

from pipeline.cli import query
from pipeline.cli.status import _redis_view
from pipeline.config import load_settings
from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.core.session import KeyState, Session
from pipeline.store.base import Commit
from pipeline.store.connection import is_cluster, redis_client, redis_client_sync
from pipeline.store.redis import RedisStore

T0 = 1_764_237_600_000
RULES = SessionRules(inactivity_timeout_ms=300_000, reopen_grace_ms=900_000)


def open_state(user: str, session_id: str) -> KeyState:
    key = ("shop", "u", user)
    ev = Event(type="session", time_ms=T0, arrival_ms=T0, project="shop", user_id=user,
               session_id=None, id=f"ev-{session_id}", partition=0, offset=1)
    session = Session.begin(session_id, ev)
    session.add(ev, RULES)
    return KeyState(key, open=session)


@pytest.mark.parametrize("mode", ["auto", "true"])
def test_the_factory_builds_a_cluster_client_for_a_cluster(redis_cluster: Any, mode: str) -> None:
    settings = load_settings(redis_url=redis_cluster.url, redis_cluster=mode)
    client = redis_client(settings)
    assert isinstance(client, aioredis.RedisCluster) and is_cluster(client)
    asyncio.run(client.aclose())
    sync = redis_client_sync(settings)
    assert isinstance(sync, redis.RedisCluster)
    sync.close()


def test_the_factory_builds_a_single_node_client_for_one_server(redis_server: Any) -> None:
    client = redis_client(load_settings(redis_url=redis_server.url))
    assert not is_cluster(client)
    asyncio.run(client.aclose())


def test_sessions_and_status_read_every_partition_from_the_cluster(
    redis_cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = f"sz-cl-{uuid.uuid4().hex[:8]}"
    settings = load_settings(redis_url=redis_cluster.url, redis_key_prefix=prefix)
    partitions = list(range(8))

    async def write() -> None:
        store = RedisStore(redis_client(settings), prefix)
        try:
            for p in partitions:
                epoch = (await store.claim(p)).epoch
                state = open_state(f"user{p}", f"s-{p}")
                assert await store.commit(p, epoch, Commit(
                    states={state.key: state}, due_ms={state.key: T0 + 300_000},
                    offsets={"events": 1}, clock_ms=T0))
        finally:
            await store.close()

    asyncio.run(write())
    masters = {redis_cluster.master_of(f"{prefix}:{{p{p}}}:meta").port for p in partitions}
    assert len(masters) == 3, "8 partitions' slots fall on every master"

    query.live(None, None, 100, True, settings=settings)
    lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert sorted(r["session_id"] for r in lines) == [f"s-{p}" for p in partitions]
    assert query.show("s-5", True, settings=settings)
    assert orjson.loads(capsys.readouterr().out)["user_id"] == "user5"

    view = asyncio.run(_redis_view(settings, partitions))
    assert {p: v["open_sessions"] for p, v in view["partitions"].items()} == dict.fromkeys(partitions, 1)
    assert all(v["applied"] == {"events": 1} for v in view["partitions"].values())


def test_the_blocking_cluster_client_bounds_every_nodes_pool(redis_cluster: Any) -> None:
    """Each node the blocking cluster client talks to has a BlockingConnectionPool with
    the socket timeouts and SESSIONIZER_REDIS_MAX_CONNECTIONS, as a single-node client."""
    settings = load_settings(redis_url=redis_cluster.url, redis_cluster="auto", redis_max_connections=5,
                             redis_socket_timeout=4, redis_connect_timeout=3)
    client = redis_client_sync(settings)
    try:
        assert is_cluster(client)
        nodes = client.get_nodes()  # type: ignore[attr-defined]
        assert len(nodes) == 6
        for node in nodes:
            pool = node.redis_connection.connection_pool
            assert type(pool).__name__ == "BlockingConnectionPool"
            assert pool.max_connections == 5
            kwargs = pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (4, 3)
        assert client.ping()
    finally:
        client.close()
