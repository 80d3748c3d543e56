"""The Sessions report's HTTP side through aiohttp's test client: the JSON API on the
in-memory store (filled by the real engine, see test_report_data), parameter
checks, the optional token, the page and its assets, and the gateway's hook."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ConnectionError as RedisConnectionError
from test_report_data import MIN, NOW, demo_events, event, populate

from pipeline.config import Settings
from pipeline.core.timefmt import format_ms
from pipeline.gateway.app import create_app
from pipeline.gateway.settings import GatewaySettings
from pipeline.report.api import load_assets, setup_report
from pipeline.report.settings import ReportSettings
from pipeline.store.memory import MemoryStore

TOKEN = "report-Zq8Lm3Vx9Tk"
Scenario = Callable[[TestClient], Awaitable[None]]


def serve(
    scenario: Scenario, *, store: Any = None, api_keys: dict[str, str] | None = None, **report: Any
) -> None:
    report.setdefault("token", TOKEN)

    async def main() -> None:
        nonlocal store
        if store is None:
            store = MemoryStore()
            await populate(store, demo_events(NOW), clock_ms=NOW)
        app = web.Application()
        setup_report(
            app,
            store=store,
            settings=Settings(),
            report_settings=ReportSettings(**report),
            clock_ms=lambda: NOW,
            api_keys=api_keys,
        )
        async with TestClient(TestServer(app)) as client:
            await scenario(client)

    asyncio.run(main())


async def get(
    client: TestClient, path: str, status: int = 200, *, auth: str | None = TOKEN, **headers: str
) -> Any:
    """GET with ``Authorization: Bearer <auth>`` (the operator token unless told)."""
    if auth is not None:
        headers.setdefault("Authorization", f"Bearer {auth}")
    response = await client.get(path, headers=headers)
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    return orjson.loads(await response.read())


def who(rows: list[dict[str, Any]]) -> list[str]:
    return [r["user_id"] or r["session_id"] for r in rows]


# -- GET /api/sessions --------------------------------------------------------------------


def test_list_merges_open_and_closed_newest_first() -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, "/api/sessions")
        assert who(body["sessions"]) == [
            "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
        ]
        assert (body["count"], body["limit"], body["has_more"], body["partial"]) == (5, 100, False, False)
        assert body["now"] == format_ms(NOW)
        anonymous, alice, carol, bob, _ = body["sessions"]
        assert (alice["online"], alice["status"], alice["close_reason"]) == (True, "open", None)
        assert (alice["user_name"], alice["project"], alice["event_count"]) == ("Alice", "shop", 4)
        assert (anonymous["online"], anonymous["user_id"]) == (True, None)
        assert (bob["online"], bob["close_reason"], bob["event_count"], bob["error_count"]) == (
            False, "ended", 4, 1,
        )
        assert (bob["duration_ms"], bob["start"]) == (4 * MIN, format_ms(NOW - 50 * MIN))
        assert (carol["close_reason"], carol["error_count"], carol["has_error"]) == ("timeout", 0, False)
        assert "events" not in bob and "data" not in bob  # the list stays small

    serve(scenario)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("project=shop", ["alice@example.com", "bob@example.com", "dave"]),
        ("user=carol", ["carol"]),
        ("project=blog&active=true", ["9f1c2e7a4b5d4c3e"]),
        ("active=true", ["9f1c2e7a4b5d4c3e", "alice@example.com"]),
        ("active=false&project=blog", ["9f1c2e7a4b5d4c3e", "carol"]),
        (f"since={format_ms(NOW - 45 * MIN)}", ["9f1c2e7a4b5d4c3e", "alice@example.com", "carol"]),
        (f"until={NOW - 45 * MIN}", ["bob@example.com", "dave"]),
        (f"since={NOW - 50 * MIN}&until=2025-11-27T10:20:00%2B00:00", ["carol", "bob@example.com"]),
        ("project=&user=&since=&until=&active=&limit=", [
            "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
        ]),  # empty values count as not given
        ("project=nope", []),
    ],
)
def test_list_filters(query: str, expected: list[str]) -> None:
    async def scenario(client: TestClient) -> None:
        assert who((await get(client, f"/api/sessions?{query}"))["sessions"]) == expected

    serve(scenario)


def test_list_limit() -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, "/api/sessions?limit=2")
        assert (who(body["sessions"]), body["count"], body["has_more"]) == (
            ["9f1c2e7a4b5d4c3e", "alice@example.com"], 2, True,
        )

    serve(scenario)


@pytest.mark.parametrize(
    ("query", "parameter", "says"),
    [
        ("limit=0", "limit", "from 1 to 1000"),
        ("limit=1001", "limit", "from 1 to 1000"),
        ("limit=ten", "limit", "'ten' is not a whole number"),
        ("since=yesterday", "since", "not an RFC 3339 date-time"),
        ("since=2025-11-27T10:00:00.000", "since", "has no UTC offset; add Z or +hh:mm"),
        ("until=-5", "until", "not an RFC 3339"),
        ("until=99999999999999999", "until", "out of range"),
        (f"since={NOW}&until={NOW - 1}", "since", "after until"),
        ("active=maybe", "active", "not a boolean"),
        ("usr=alice", "usr", "unknown parameter; this endpoint takes project, user, since"),
        ("project=a&project=b", "project", "more than once"),
        ("project=" + "p" * 101, "project", "at most 100 characters"),
        ("user=" + "u" * 257, "user", "at most 256 characters"),
    ],
)
def test_list_refuses_bad_parameters_saying_which(query: str, parameter: str, says: str) -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, f"/api/sessions?{query}", 400)
        assert (body["error"], body["parameter"]) == ("invalid_parameter", parameter)
        assert body["message"].startswith(f"{parameter}: ") and says in body["message"]

    serve(scenario)


# -- GET /api/sessions/{id} -------------------------------------------------------------------


def test_one_open_session_with_its_events_and_data() -> None:
    async def scenario(client: TestClient) -> None:
        listed = await get(client, "/api/sessions?user=alice@example.com")
        sid = listed["sessions"][0]["session_id"]
        body = await get(client, f"/api/sessions/{sid}")
        session = body["session"]
        assert (session["session_id"], session["online"], session["status"]) == (sid, True, "open")
        assert [(e["type"], e["source"], e["message"]) for e in session["events"]] == [
            ("session", None, None),
            ("usage", "search", "searched 'red shoes'"),
            ("usage", "product-page", "viewed SKU 4411"),
            ("log", "cart", "added 1 item"),
        ]
        assert session["events"][2]["value"] == 129.0
        assert set(session["events"][0]) == {
            "id", "type", "timestamp", "source", "message", "value", "partition", "offset",
        }
        assert session["data"]["plan"] == "pro" and session["data"]["cart_id"] == "c-981"
        assert (session["heartbeat_count"], session["error_count"]) == (1, 0)

    serve(scenario)


def test_one_closed_session_from_the_history() -> None:
    async def scenario(client: TestClient) -> None:
        listed = await get(client, "/api/sessions?user=bob@example.com")
        sid = listed["sessions"][0]["session_id"]
        session = (await get(client, f"/api/sessions/{sid}"))["session"]
        assert (session["online"], session["close_reason"], session["error_count"]) == (False, "ended", 1)
        assert [e["type"] for e in session["events"]] == ["session", "usage", "error", "sessionend"]
        assert session["data"] == {"@error": {"type": "TypeError"}}

    serve(scenario)


def test_unknown_and_malformed_session_ids() -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, "/api/sessions/0123456789abcdef", 404)
        assert body["error"] == "not_found" and "0123456789abcdef" in body["message"]
        body = await get(client, "/api/sessions/not%20an%20id!", 400)
        assert (body["error"], body["parameter"]) == ("invalid_parameter", "session_id")

    serve(scenario)


def test_a_session_id_two_projects_use_is_told_apart_by_project() -> None:
    """Session ids are unique within a project: ``?project=`` picks one; without it, the
    latest started session with that id answers."""
    sid = "9f1c2e7a4b5d4c3e"  # the demo's anonymous blog session; now shop uses it too

    async def scenario(client: TestClient) -> None:
        listed = await get(client, "/api/sessions?active=true")
        assert sorted(r["project"] for r in listed["sessions"] if r["session_id"] == sid) == ["blog", "shop"]
        blog = (await get(client, f"/api/sessions/{sid}?project=blog"))["session"]
        assert (blog["project"], blog["user_id"]) == ("blog", None)
        assert [e["source"] for e in blog["events"]] == [None, "reader"]
        shop = (await get(client, f"/api/sessions/{sid}?project=shop"))["session"]
        assert (shop["project"], shop["user_id"]) == ("shop", "erin")
        latest = (await get(client, f"/api/sessions/{sid}"))["session"]
        assert latest["project"] == "shop"
        body = await get(client, f"/api/sessions/{sid}?project=news", 404)
        assert body["error"] == "not_found" and "'news'" in body["message"]
        body = await get(client, f"/api/sessions/{sid}?projekt=shop", 400)
        assert (body["error"], body["parameter"]) == ("invalid_parameter", "projekt")

    store = MemoryStore()
    extra = [event("session", NOW - 1 * MIN, sid=sid, user="erin")]
    asyncio.run(populate(store, [*demo_events(NOW), *extra], clock_ms=NOW))
    serve(scenario, store=store)


# -- GET /api/sessions/stats ----------------------------------------------------------------------


def test_stats_default_to_the_last_24_hours() -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, "/api/sessions/stats")
        assert (body["since"], body["until"]) == (format_ms(NOW - 24 * 60 * MIN), format_ms(NOW))
        assert {k: body[k] for k in ("sessions", "online", "closed", "users", "with_errors")} == {
            "sessions": 5, "online": 2, "closed": 3, "users": 4, "with_errors": 1,
        }
        assert body["sessions_per_hour"] == round(5 / 24, 4)
        assert body["avg_duration_ms"] == round((4 + 3 + 5) * MIN / 3)
        assert body["bucket_ms"] == 30 * MIN and len(body["series"]) == 49
        assert sum(b["sessions"] for b in body["series"]) == 5
        assert (body["project"], body["partial"], body["now"]) == (None, False, format_ms(NOW))

    serve(scenario)


def test_stats_of_a_project_and_a_range() -> None:
    async def scenario(client: TestClient) -> None:
        since, until = NOW - 60 * MIN, NOW
        body = await get(client, f"/api/sessions/stats?project=shop&since={since}&until={until}")
        assert {k: body[k] for k in ("project", "sessions", "online", "users")} == {
            "project": "shop", "sessions": 2, "online": 1, "users": 2,
        }
        assert body["avg_duration_ms"] == 4 * MIN  # bob; alice is still online
        assert body["bucket_ms"] == MIN
        minute = {b["start"]: b for b in body["series"]}
        assert minute[format_ms(NOW - 50 * MIN)] == {
            "start": format_ms(NOW - 50 * MIN), "sessions": 1, "users": 1,
        }

    serve(scenario)


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("since=soon", "since"),
        (f"since={NOW}&until={NOW}", "until"),
        (f"since={NOW}", "since"),  # until defaults to now
        ("active=true", "active"),
        ("limit=5", "limit"),
    ],
)
def test_stats_refuse_bad_parameters(query: str, parameter: str) -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, f"/api/sessions/stats?{query}", 400)
        assert (body["error"], body["parameter"]) == ("invalid_parameter", parameter)

    serve(scenario)


# -- store trouble, auth, page ----------------------------------------------------------------------


class DownStore:
    async def open_sessions(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        raise RedisConnectionError("Error 111 connecting to localhost:6379. Connection refused.")

    get_session = closed_sessions = get_closed_session = open_sessions


@pytest.mark.parametrize("path", ["/api/sessions", "/api/sessions/stats", "/api/sessions/abcdefgh12"])
def test_store_down_is_a_503_that_says_what_to_check(path: str) -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, path, 503)
        assert body["error"] == "store_unavailable"
        assert "SESSIONIZER_REDIS_URL" in body["message"]

    serve(scenario, store=DownStore())


@pytest.mark.parametrize("path", ["/api/sessions", "/api/sessions/stats", "/api/sessions/abcdefgh12"])
def test_token_guards_the_api(path: str) -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, path, 401, auth=None)
        assert body["error"] == "unauthorized" and "SESSIONIZER_REPORT_TOKEN" in body["message"]
        await get(client, path, 401, Authorization="Bearer wrong-token")
        await get(client, path, 401, Authorization=TOKEN)
        response = await client.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status in (200, 404)
        response = await client.get(f"{path}?access_token={TOKEN}")
        assert response.status == 401  # never in the URL: it would end up in access logs

    serve(scenario, token=TOKEN)


SHOP_KEY = "shop-Hq8Vn3Lk5Rz2Wx"
BLOG_KEY = "blog-Tm4Pc9Yj6Ds1Gf"
KEYS = {SHOP_KEY: "shop", BLOG_KEY: "blog"}


def test_an_api_key_sees_its_own_project_only() -> None:
    async def scenario(client: TestClient) -> None:
        rows = (await get(client, "/api/sessions", auth=SHOP_KEY))["sessions"]
        assert who(rows) == ["alice@example.com", "bob@example.com", "dave"]
        assert {r["project"] for r in rows} == {"shop"}
        rows = (await get(client, "/api/sessions?project=shop", auth=SHOP_KEY))["sessions"]
        assert {r["project"] for r in rows} == {"shop"}
        rows = (await get(client, "/api/sessions", auth=BLOG_KEY))["sessions"]
        assert who(rows) == ["9f1c2e7a4b5d4c3e", "carol"]
        stats = await get(client, "/api/sessions/stats", auth=BLOG_KEY)
        assert (stats["project"], stats["sessions"]) == ("blog", 2)
        # the operator token sees all
        rows = (await get(client, "/api/sessions"))["sessions"]
        assert {r["project"] for r in rows} == {"shop", "blog"}

    serve(scenario, api_keys=KEYS)


@pytest.mark.parametrize(
    "path",
    ["/api/sessions?project=blog", "/api/sessions/stats?project=blog",
     "/api/sessions/9f1c2e7a4b5d4c3e?project=blog"],
)
def test_an_api_key_is_403_for_another_project(path: str) -> None:
    async def scenario(client: TestClient) -> None:
        body = await get(client, path, 403, auth=SHOP_KEY)
        assert body["error"] == "forbidden_project" and "'blog'" in body["message"]
        await get(client, path, 200, auth=BLOG_KEY)

    serve(scenario, api_keys=KEYS)


def test_an_api_key_does_not_find_another_projects_session_by_id() -> None:
    async def scenario(client: TestClient) -> None:
        await get(client, "/api/sessions/9f1c2e7a4b5d4c3e", 404, auth=SHOP_KEY)  # blog's
        found = await get(client, "/api/sessions/9f1c2e7a4b5d4c3e", auth=BLOG_KEY)
        assert found["session"]["project"] == "blog"

    serve(scenario, api_keys=KEYS)


def test_without_a_token_or_keys_everything_is_401() -> None:
    async def scenario(client: TestClient) -> None:
        for path in ("/api/sessions", "/api/sessions/stats", "/api/sessions/abcdefgh12"):
            await get(client, path, 401, auth=None)
            await get(client, path, 401, auth="some-guessed-key-123")

    serve(scenario, token="")


def test_list_pages_with_offset_and_never_carries_events() -> None:
    async def scenario(client: TestClient) -> None:
        first = await get(client, "/api/sessions?limit=2")
        assert (who(first["sessions"]), first["offset"], first["next_offset"]) == (
            ["9f1c2e7a4b5d4c3e", "alice@example.com"], 0, 2,
        )
        second = await get(client, "/api/sessions?limit=2&offset=2")
        assert (who(second["sessions"]), second["has_more"], second["next_offset"]) == (
            ["carol", "bob@example.com"], True, 4,
        )
        last = await get(client, "/api/sessions?limit=2&offset=4")
        assert (who(last["sessions"]), last["has_more"], last["next_offset"]) == (["dave"], False, None)
        for row in [*first["sessions"], *second["sessions"], *last["sessions"]]:
            assert "events" not in row and "data" not in row
        body = await get(client, "/api/sessions?offset=10001", 400)
        assert body["parameter"] == "offset"

    serve(scenario)


def test_report_calls_are_rate_limited_per_client_with_retry_after() -> None:
    async def scenario(client: TestClient) -> None:
        for _ in range(3):
            await get(client, "/api/sessions")
        response = await client.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1
        body = orjson.loads(await response.read())
        assert (body["error"], body["limit"]) == ("rate_limited", "report_requests")

    serve(scenario, rate_limit=0.01, rate_burst=3)


def test_failed_authentications_are_limited_per_client() -> None:
    async def scenario(client: TestClient) -> None:
        for _ in range(10):
            await get(client, "/api/sessions", 401, auth="guess-Wq3Er5Ty7Ui9Op")
        response = await client.get("/api/sessions", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status == 429  # even with the right token, until the budget refills
        body = orjson.loads(await response.read())
        assert (body["error"], body["limit"]) == ("rate_limited", "auth_failures")
        assert int(response.headers["Retry-After"]) >= 1

    serve(scenario)


@pytest.mark.parametrize("token", ["short-Tk3", "change-me-please-0123456789", "demo-Zq8Lm3Vx9TkWq"])
def test_a_weak_report_token_is_refused_at_start(token: str) -> None:
    from pipeline.exceptions import ConfigError

    with pytest.raises(ConfigError, match="SESSIONIZER_REPORT_TOKEN") as caught:
        setup_report(web.Application(), store=MemoryStore(), settings=Settings(),
                     report_settings=ReportSettings(token=token))
    assert token not in str(caught.value)


def test_page_and_assets_are_served_without_the_token() -> None:
    async def scenario(client: TestClient) -> None:
        for path in ("/sessions", "/sessions/22a0b5a9a746cbd79c1a15a9264f606f"):
            response = await client.get(path)
            assert response.status == 200 and response.content_type == "text/html"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            page = await response.text()
            assert '<script type="module" src="/sessions/assets/report.js">' in page
        for name, kind in [("report.js", "text/javascript"), ("chart.js", "text/javascript"),
                           ("report.css", "text/css")]:
            response = await client.get(f"/sessions/assets/{name}")
            assert (response.status, response.content_type) == (200, kind)
            again = await client.get(
                f"/sessions/assets/{name}", headers={"If-None-Match": response.headers["ETag"]}
            )
            assert again.status == 304
        for missing in ("nope.js", "index.html"):
            assert (await client.get(f"/sessions/assets/{missing}")).status == 404

    serve(scenario, token=TOKEN)


def test_the_page_sets_every_value_as_text() -> None:
    """No API value reaches innerHTML: the page builds its DOM from text nodes."""
    async def scenario(client: TestClient) -> None:
        for name in ("report.js", "chart.js"):
            script = await (await client.get(f"/sessions/assets/{name}")).text()
            assert "innerHTML" not in script and "insertAdjacentHTML" not in script

    serve(scenario)


def test_disabled_report_mounts_nothing() -> None:
    async def scenario(client: TestClient) -> None:
        assert (await client.get("/sessions")).status == 404
        assert (await client.get("/api/sessions")).status == 404

    serve(scenario, enabled=False)


def test_gateway_opens_the_report_to_its_ingestion_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONIZER_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.delenv("SESSIONIZER_REPORT_TOKEN", raising=False)
    monkeypatch.delenv("SESSIONIZER_REPORT_ENABLED", raising=False)

    async def publish(records: Any) -> None:
        raise AssertionError("nothing is published")

    async def main() -> None:
        app = create_app({"ingest-key-123456": "shop"}, publish, settings=GatewaySettings())
        async with TestClient(TestServer(app)) as client:
            page = await client.get("/sessions")
            assert page.status == 200 and page.content_type == "text/html"
            await get(client, "/api/sessions", 401, auth=None)
            # a Redis store, opened at startup
            body = await get(client, "/api/sessions", 503, auth="ingest-key-123456")
            assert body["error"] == "store_unavailable"
            assert (await client.post("/v1/events", data=b"[]")).status == 401  # ingestion still keyed

    asyncio.run(main())


def test_the_assets_ship_with_the_package() -> None:
    assert set(load_assets()) == {"index.html", "report.js", "chart.js", "report.css"}


def test_without_its_assets_the_page_says_so_and_the_api_still_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("pipeline.report.api.load_assets", dict)

    async def scenario(client: TestClient) -> None:
        body = await get(client, "/sessions", 500)
        assert body["error"] == "report_page_missing" and "report/static" in body["message"]
        assert (await get(client, "/api/sessions"))["count"] == 5

    serve(scenario)
