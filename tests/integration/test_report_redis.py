"""The Sessions report's JSON API on a real Redis: sessions written by the real engine
through :class:`RedisStore` (states, event logs and the closed-session history, as the
worker commits them), over two partitions, each test under its own key prefix."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from test_report_data import MIN, NOW, RULES, demo_events, event, populate

from pipeline.config import Settings
from pipeline.core.timefmt import format_ms
from pipeline.devtools.services import EmbeddedRedis
from pipeline.report.api import setup_report
from pipeline.report.settings import ReportSettings
from pipeline.store.connection import redis_client
from pipeline.store.keys import Keys
from pipeline.store.redis import RedisStore

Scenario = Callable[[TestClient, RedisStore], Awaitable[None]]
TOKEN = "report-Zq8Lm3Vx9Tk"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def serve(redis: EmbeddedRedis, scenario: Scenario, **store_options: int) -> None:
    prefix = f"sz-report-{uuid.uuid4().hex[:10]}"

    async def main() -> None:
        store = RedisStore.from_url(redis.url, prefix, **store_options)
        app = web.Application()
        setup_report(
            app, store=store, settings=Settings(), report_settings=ReportSettings(token=TOKEN),
            clock_ms=lambda: NOW,
        )
        try:
            async with TestClient(TestServer(app)) as client:
                await scenario(client, store)
        finally:
            await store.close()

    asyncio.run(main())


async def get(client: TestClient, path: str, status: int = 200) -> Any:
    response = await client.get(path, headers=AUTH)
    assert response.status == status, await response.text()
    return orjson.loads(await response.read())


def who(rows: list[dict[str, Any]]) -> list[str]:
    return [r["user_id"] or r["session_id"] for r in rows]


async def two_partitions(store: RedisStore) -> None:
    """The demo sessions: shop users on partition 0, blog ones on partition 5."""
    events = demo_events(NOW)
    await populate(store, [e for e in events if e.project == "shop"], clock_ms=NOW, partition=0)
    await populate(store, [e for e in events if e.project == "blog"], clock_ms=NOW, partition=5)


def test_list_detail_and_stats_on_redis(redis_server: EmbeddedRedis) -> None:
    async def scenario(client: TestClient, store: RedisStore) -> None:
        await two_partitions(store)
        body = await get(client, "/api/sessions")
        assert who(body["sessions"]) == [
            "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
        ]
        assert [r["online"] for r in body["sessions"]] == [True, True, False, False, False]
        assert [r["close_reason"] for r in body["sessions"]] == [None, None, "timeout", "ended", "ended"]
        assert who((await get(client, "/api/sessions?project=blog"))["sessions"]) == [
            "9f1c2e7a4b5d4c3e", "carol",
        ]
        assert who((await get(client, "/api/sessions?user=alice@example.com&active=true"))["sessions"]) == [
            "alice@example.com",
        ]
        assert who((await get(client, f"/api/sessions?until={format_ms(NOW - 45 * MIN)}"))["sessions"]) == [
            "bob@example.com", "dave",
        ]

        ids = {r["user_id"] or r["session_id"]: r["session_id"] for r in body["sessions"]}
        alice = (await get(client, f"/api/sessions/{ids['alice@example.com']}"))["session"]
        assert [e["type"] for e in alice["events"]] == ["session", "usage", "usage", "log"]
        assert alice["data"]["@environment"]["browser"] == "Firefox 133"
        bob = (await get(client, f"/api/sessions/{ids['bob@example.com']}"))["session"]
        assert (bob["online"], bob["close_reason"], bob["error_count"]) == (False, "ended", 1)
        assert [e["message"] for e in bob["events"]][2] == "price is not a number"
        await get(client, "/api/sessions/0123456789abcdef", 404)

        stats = await get(client, f"/api/sessions/stats?since={NOW - 60 * MIN}&until={NOW}")
        assert {k: stats[k] for k in ("sessions", "online", "closed", "users", "with_errors")} == {
            "sessions": 4, "online": 2, "closed": 2, "users": 3, "with_errors": 1,
        }
        assert stats["avg_duration_ms"] == (4 * MIN + 3 * MIN) // 2

    serve(redis_server, scenario)


def test_closed_sessions_stay_listable_after_they_leave_the_live_state(
    redis_server: EmbeddedRedis,
) -> None:
    async def scenario(client: TestClient, store: RedisStore) -> None:
        events = demo_events(NOW)
        # past the reopen grace: the closed sessions' key states and event logs are gone
        later = NOW + RULES.reopen_grace_ms + 10 * MIN
        await populate(store, events, clock_ms=later, partition=2)
        keys = Keys(store.keys.prefix)
        live = [k async for k in store.client.scan_iter(match=f"{keys.shard(2)}k:*")]
        assert live == []  # every session is closed and forgotten by the live state
        body = await get(client, "/api/sessions")
        assert who(body["sessions"]) == [
            "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
        ]
        assert not any(r["online"] for r in body["sessions"])
        sid = body["sessions"][3]["session_id"]
        bob = (await get(client, f"/api/sessions/{sid}"))["session"]
        assert [e["type"] for e in bob["events"]] == ["session", "usage", "error", "sessionend"]

    serve(redis_server, scenario)


def test_the_history_bound_is_the_report_bound(redis_server: EmbeddedRedis) -> None:
    async def scenario(client: TestClient, store: RedisStore) -> None:
        events = [event("usage", NOW - (50 - i) * MIN, user=f"u{i}") for i in range(6)]
        await populate(store, events, clock_ms=NOW, partition=1)
        # SESSIONIZER_HISTORY_MAX_SESSIONS=3 per partition: the oldest three are gone
        assert who((await get(client, "/api/sessions"))["sessions"]) == ["u5", "u4", "u3"]

    serve(redis_server, scenario, history_max=3)


PASSWORD = "s3cret-Pa55word-for-the-report"


def test_the_report_reads_sessions_with_the_password_in_its_own_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The report's own Redis client (opened from the settings when the gateway starts)
    logs in with SESSIONIZER_REDIS_PASSWORD, as the worker's does."""
    prefix = f"sz-report-{uuid.uuid4().hex[:10]}"
    with EmbeddedRedis(password=PASSWORD, appendonly=False) as locked:
        address = f"redis://{locked.host}:{locked.port}/0"  # no password in the URL
        settings = Settings(redis_url=address, redis_password=PASSWORD, redis_key_prefix=prefix)

        async def main() -> None:
            writer = RedisStore(redis_client(settings), prefix)
            try:
                await two_partitions(writer)
            finally:
                await writer.close()
            app = web.Application()
            setup_report(app, settings=settings, report_settings=ReportSettings(token=TOKEN),
                         clock_ms=lambda: NOW)
            async with TestClient(TestServer(app)) as client:
                body = await get(client, "/api/sessions")
                assert who(body["sessions"]) == [
                    "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
                ]

        asyncio.run(main())
