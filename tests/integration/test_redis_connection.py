"""Every Redis client comes from :mod:`pipeline.store.connection`: timeouts that fail a
command on a silent server, a bounded pool, and the worker's refusal of an evicting Redis."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipeline.cli import main
from pipeline.config import Settings
from pipeline.devtools.services import EmbeddedRedis, free_port
from pipeline.store.connection import redis_client, redis_client_sync


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers (a half-open peer)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"
    finally:
        server.close()


def test_a_silent_server_fails_the_command_after_the_socket_timeout(silent_server: str) -> None:
    settings = Settings(redis_url=silent_server, redis_socket_timeout=0.5)

    async def ping() -> None:
        client = redis_client(settings)
        try:
            await client.ping()
        finally:
            await client.aclose()

    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        asyncio.run(ping())
    assert time.monotonic() - started < 5
    sync = redis_client_sync(settings)
    started = time.monotonic()
    with pytest.raises(RedisTimeoutError):
        sync.ping()
    assert time.monotonic() - started < 5
    sync.close()


def test_the_pool_is_bounded(redis_server: EmbeddedRedis) -> None:
    settings = Settings(redis_url=redis_server.url, redis_max_connections=3, redis_socket_timeout=0.5)

    async def many() -> int:
        client = redis_client(settings)
        try:
            pool = client.connection_pool
            assert pool.max_connections == 3
            # more concurrent commands than connections: they wait their turn, none fails
            results = await asyncio.gather(*(client.ping() for _ in range(20)))
            assert all(results)
            return len(pool._available_connections) + len(pool._in_use_connections)
        finally:
            await client.aclose()

    assert asyncio.run(many()) <= 3


@pytest.fixture(scope="module")
def evicting_redis() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=False, extra_args=["--maxmemory-policy", "allkeys-lru"]) as server:
        yield server


def _worker(monkeypatch: pytest.MonkeyPatch, url: str, **env: str) -> list[str]:
    for name in ("SESSIONIZER_REDIS_PASSWORD", "SESSIONIZER_KAFKA_SECURITY_PROTOCOL",
                 "SESSIONIZER_REDIS_ALLOW_EVICTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SESSIONIZER_REDIS_URL", url)
    monkeypatch.setenv("SESSIONIZER_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")  # nothing there
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["worker"])
    assert result.exit_code == 1
    return result.output.strip().splitlines()


def test_the_worker_refuses_an_evicting_redis(
    evicting_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = _worker(monkeypatch, evicting_redis.url)
    assert len(lines) == 1, lines
    assert lines[0].startswith("sessionizer: error: Redis maxmemory-policy is allkeys-lru")
    assert "noeviction" in lines[0] and "SESSIONIZER_REDIS_ALLOW_EVICTION=true" in lines[0]


def test_the_worker_accepts_an_evicting_redis_when_told(
    evicting_redis: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the Redis checks, it stops at the (absent) broker instead."""
    lines = _worker(monkeypatch, evicting_redis.url, SESSIONIZER_REDIS_ALLOW_EVICTION="true")
    assert "maxmemory-policy" not in lines[-1]
    assert "cannot reach Kafka" in lines[-1]
    # named by what kafka-python raised, not by the wrapper topic creation puts round it
    assert "(KafkaTimeoutError)" in lines[-1] or "(NoBrokersAvailable)" in lines[-1], lines[-1]


def test_commands_are_packed_as_redis_py_packs_them(redis_server: EmbeddedRedis) -> None:
    """The single-node client packs commands with hiredis from the arguments as given:
    the same bytes as redis-py's own packer, the same refusals, and the values round-trip."""
    from redis.asyncio.connection import Connection
    from redis.exceptions import DataError

    from pipeline.store.connection import _PackInC

    settings = Settings(redis_url=redis_server.url)

    async def body() -> None:
        client = redis_client(settings)
        try:
            connection = client.connection_pool.make_connection()
            assert isinstance(connection, _PackInC)
            plain = Connection()
            for args in [
                ("HSET", "k", "f", b"\x00\xff bytes", "f2", "zoë ✓", "n", 12, "x", 2.5, "big", 2**70),
                ("CLIENT SETNAME", "worker-1"),
                (b"GET", b"k"),
            ]:
                assert b"".join(connection.pack_command(*args)) == b"".join(plain.pack_command(*args))
            with pytest.raises(DataError):
                connection.pack_command("SET", "k", True)
            await client.hset("sz-pack:h", items=["a", b"\x00\xff", "b", "zoë", "c", 7])
            assert await client.hgetall("sz-pack:h") == {b"a": b"\x00\xff", b"b": "zoë".encode(), b"c": b"7"}
        finally:
            await client.delete("sz-pack:h")
            await client.aclose()

    asyncio.run(body())
