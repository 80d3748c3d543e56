"""The report's store access (pipeline.report.data) and dashboard numbers
(pipeline.report.stats) on the in-memory store, filled the way the worker fills it.

:func:`populate` and :func:`demo_events` are shared with the report's API,
integration and browser tests: sessions are made by the real engine from events,
then committed with their history entries, as the partition processor does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import orjson
import pytest

from pipeline.core.engine import Sessionizer
from pipeline.core.event import Event
from pipeline.core.rules import SessionRules
from pipeline.core.timefmt import format_ms, parse_timestamp_ms
from pipeline.report.data import Limits, SessionData, detail, summary
from pipeline.report.params import ListQuery
from pipeline.report.stats import DAY_MS, HOUR_MS, MINUTE_MS, bucket_ms, compute
from pipeline.store.base import Commit
from pipeline.store.memory import MemoryStore

T0 = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z
MIN = MINUTE_MS
RULES = SessionRules(inactivity_timeout_ms=5 * MIN, reopen_grace_ms=15 * MIN)
ENVIRONMENT = {"o_s_name": "Linux", "browser": "Firefox 133", "ip_address": "203.0.113.7"}

Record = dict[str, Any]


def event(
    type: str,
    at_ms: int,
    *,
    user: str | None = None,
    sid: str | None = None,
    project: str = "shop",
    name: str | None = None,
    **fields: Any,
) -> Event:
    """An event at ``at_ms`` (epoch ms) that arrives at once."""
    return Event(
        type=type,
        time_ms=at_ms,
        arrival_ms=at_ms,
        project=project,
        user_id=user,
        session_id=sid,
        user_name=name,
        id=f"{type}-{user or sid}-{at_ms}",
        **fields,
    )


async def populate(
    store: Any,
    events: Iterable[Event],
    *,
    clock_ms: int,
    partition: int = 0,
    rules: SessionRules = RULES,
) -> list[Record]:
    """Apply ``events`` (in arrival order) and advance to ``clock_ms`` on a fresh engine,
    then commit states and the closed sessions' history in one batch, as the worker
    does. Returns the closed-session records emitted."""
    engine = Sessionizer(rules)
    records: list[Record] = []
    for ev in sorted(events, key=lambda e: e.arrival_ms):
        records.extend(engine.apply(ev).records)
    records.extend(engine.advance(clock_ms))
    claim = await store.claim(partition)
    changes = engine.take_changes()
    await store.load(partition, list(changes), None, 0)
    applied = await store.commit(
        partition,
        claim.epoch,
        Commit(
            states=changes,
            due_ms={key: engine.due_ms(key) for key in changes},
            offsets={},
            clock_ms=engine.clock_ms,
            history=[
                (r["session_id"], r["project"], parse_timestamp_ms(r["end"]), orjson.dumps(r))
                for r in records
            ],
            dropped=engine.take_dropped(),
        ),
    )
    assert applied
    return records


def demo_events(now_ms: int) -> list[Event]:
    """Five sessions in the hour before ``now_ms``: alice online in shop, bob ended in
    shop with an error, carol timed out in blog, an anonymous client session online in
    blog, and dave ended in shop an hour and a half earlier."""
    m = MIN
    t = now_ms - 60 * m
    return [
        # alice: online, started 8 minutes ago
        event("session", now_ms - 8 * m, user="alice@example.com", name="Alice",
              data={"@environment": ENVIRONMENT, "plan": "pro"}),
        event("usage", now_ms - 7 * m, user="alice@example.com", source="search",
              message="searched 'red shoes'"),
        event("usage", now_ms - 5 * m, user="alice@example.com", source="product-page",
              message="viewed SKU 4411", value=129.0),
        event("log", now_ms - 2 * m, user="alice@example.com", source="cart",
              message="added 1 item", data={"cart_id": "c-981"}),
        event("heartbeat", now_ms - 1 * m, user="alice@example.com"),
        # bob: ended, one error
        event("session", t + 10 * m, user="bob@example.com", name="Bob"),
        event("usage", t + 11 * m, user="bob@example.com", source="checkout"),
        event("error", t + 12 * m, user="bob@example.com", source="TypeError",
              message="price is not a number", data={"@error": {"type": "TypeError"}}),
        event("sessionend", t + 14 * m, user="bob@example.com"),
        # carol: idle, closed by timeout
        event("usage", t + 20 * m, user="carol", project="blog", source="editor"),
        event("usage", t + 23 * m, user="carol", project="blog", source="publish",
              message="published a post"),
        # a client session id, no user: online
        event("session", now_ms - 3 * m, sid="9f1c2e7a4b5d4c3e", project="blog"),
        event("usage", now_ms - 2 * m, sid="9f1c2e7a4b5d4c3e", project="blog", source="reader"),
        # dave: an earlier session, ended
        event("session", t - 30 * m, user="dave", name="Dave"),
        event("usage", t - 28 * m, user="dave", source="search"),
        event("sessionend", t - 25 * m, user="dave"),
    ]


NOW = T0 + 60 * MIN


def demo_store(limits: Limits | None = None) -> tuple[MemoryStore, SessionData]:
    store = MemoryStore()
    asyncio.run(populate(store, demo_events(NOW), clock_ms=NOW))
    return store, SessionData(store, limits)


def names(records: Iterable[Record]) -> list[str | None]:
    return [r["user_id"] or r["session_id"] for r in records]


# -- listing ---------------------------------------------------------------------------


def test_open_and_closed_sessions_are_merged_newest_start_first() -> None:
    _, data = demo_store()
    found = asyncio.run(data.find(ListQuery()))
    assert names(found.sessions) == [
        "9f1c2e7a4b5d4c3e", "alice@example.com", "carol", "bob@example.com", "dave",
    ]
    assert [r["status"] for r in found.sessions] == ["open", "open", "closed", "closed", "closed"]
    assert [r.get("close_reason") for r in found.sessions[2:]] == ["timeout", "ended", "ended"]
    assert (found.has_more, found.partial) == (False, False)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (ListQuery(project="shop"), ["alice@example.com", "bob@example.com", "dave"]),
        (ListQuery(project="blog"), ["9f1c2e7a4b5d4c3e", "carol"]),
        (ListQuery(user="bob@example.com"), ["bob@example.com"]),
        (ListQuery(project="blog", user="bob@example.com"), []),
        (ListQuery(active_only=True), ["9f1c2e7a4b5d4c3e", "alice@example.com"]),
        (ListQuery(project="shop", active_only=True), ["alice@example.com"]),
        (ListQuery(since_ms=NOW - 45 * MIN), ["9f1c2e7a4b5d4c3e", "alice@example.com", "carol"]),
        (ListQuery(until_ms=NOW - 45 * MIN), ["bob@example.com", "dave"]),
        (ListQuery(since_ms=NOW - 50 * MIN, until_ms=NOW - 40 * MIN), ["carol", "bob@example.com"]),
        (ListQuery(since_ms=NOW - 10 * MIN, active_only=True, user="alice@example.com"),
         ["alice@example.com"]),
    ],
)
def test_filters(query: ListQuery, expected: list[str]) -> None:
    _, data = demo_store()
    assert names(asyncio.run(data.find(query)).sessions) == expected


def test_limit_cuts_and_says_there_is_more() -> None:
    _, data = demo_store()
    found = asyncio.run(data.find(ListQuery(limit=2)))
    assert names(found.sessions) == ["9f1c2e7a4b5d4c3e", "alice@example.com"]
    assert found.has_more
    assert not asyncio.run(data.find(ListQuery(limit=5))).has_more


def test_a_reopened_session_is_listed_once_as_open() -> None:
    store = MemoryStore()
    # erin's session closes idle at T0 + 5 min: its history entry is written
    asyncio.run(populate(store, [event("usage", T0, user="erin")], clock_ms=T0 + 6 * MIN))
    found = asyncio.run(SessionData(store).find(ListQuery()))
    assert [(r["user_id"], r["status"]) for r in found.sessions] == [("erin", "closed")]

    async def next_batch() -> None:
        """A late event inside the closed session's span reopens it (SPEC rule 2)."""
        late = event("usage", T0 + 4 * MIN, user="erin")
        late.arrival_ms = T0 + 7 * MIN
        engine = Sessionizer(RULES, clock_ms=T0 + 6 * MIN)
        claim = await store.claim(0)
        for state in await store.load(0, [late.key], None, 0):
            engine.load(state)
        assert engine.apply(late).records == []  # nothing emitted until it closes again
        changes = engine.take_changes()
        commit = Commit(
            states=changes, due_ms={k: engine.due_ms(k) for k in changes}, offsets={},
            clock_ms=engine.clock_ms,
        )
        assert await store.commit(0, claim.epoch, commit)

    asyncio.run(next_batch())
    assert len(asyncio.run(store.closed_sessions())) == 1  # the history still holds it
    found = asyncio.run(SessionData(store).find(ListQuery()))
    assert [(r["user_id"], r["status"], r["revision"]) for r in found.sessions] == [
        ("erin", "open", 2)
    ]


def closed_history(count: int, *, project_of: Any) -> MemoryStore:
    """``count`` one-event sessions closed by timeout, users u0.. starting a minute apart."""
    store = MemoryStore()
    events = [
        event("usage", T0 + i * MIN, user=f"u{i:04d}", project=project_of(i)) for i in range(count)
    ]
    asyncio.run(populate(store, events, clock_ms=T0 + (count + 10) * MIN))
    return store


def test_listing_reads_deeper_into_the_history_until_it_has_enough_matches() -> None:
    # 1000 closed sessions; only every 100th is in "rare": the newest 3 are far down
    store = closed_history(1000, project_of=lambda i: "rare" if i % 100 == 0 else "busy")
    found = asyncio.run(SessionData(store).find(ListQuery(project="rare", limit=3)))
    assert names(found.sessions) == ["u0900", "u0800", "u0700"]
    assert (found.has_more, found.partial) == (True, False)


def test_listing_order_is_by_start_even_when_ends_disagree() -> None:
    # a long session that ended last but started first, and short ones in between
    store = MemoryStore()
    events = [event("usage", T0 + i * MIN, user="long") for i in range(0, 40, 4)]
    events += [event("usage", T0 + (10 + i) * MIN, user=f"short{i}") for i in range(5)]
    asyncio.run(populate(store, events, clock_ms=T0 + 60 * MIN))
    found = asyncio.run(SessionData(store).find(ListQuery(limit=3)))
    assert names(found.sessions) == ["short4", "short3", "short2"]


def test_listing_says_partial_when_the_scan_limit_stops_it() -> None:
    store = closed_history(400, project_of=lambda i: "rare" if i == 0 else "busy")
    data = SessionData(store, Limits(scan_limit=200))
    found = asyncio.run(data.find(ListQuery(project="rare")))
    assert (found.sessions, found.partial) == ([], True)
    found = asyncio.run(SessionData(store, Limits(scan_limit=1000)).find(ListQuery(project="rare")))
    assert (names(found.sessions), found.partial) == (["u0000"], False)


def test_open_sessions_over_max_open_make_the_answer_partial() -> None:
    _, data = demo_store(Limits(max_open=2))
    assert asyncio.run(data.find(ListQuery())).partial
    _, data = demo_store(Limits(max_open=3))
    assert not asyncio.run(data.find(ListQuery())).partial


# -- one session -------------------------------------------------------------------------


def test_get_finds_open_sessions_then_the_history() -> None:
    _, data = demo_store()
    listed = asyncio.run(data.find(ListQuery()))
    ids = {r["user_id"] or r["session_id"]: r["session_id"] for r in listed.sessions}
    alice = asyncio.run(data.get(ids["alice@example.com"]))
    assert alice is not None and alice["status"] == "open"
    assert [e["type"] for e in alice["events"]] == ["session", "usage", "usage", "log"]
    assert alice["data"] == {"@environment": ENVIRONMENT, "plan": "pro", "cart_id": "c-981"}
    bob = asyncio.run(data.get(ids["bob@example.com"]))
    assert bob is not None and (bob["status"], bob["close_reason"]) == ("closed", "ended")
    assert asyncio.run(data.get("no-such-session")) is None


def test_summary_and_detail_shapes() -> None:
    _, data = demo_store()
    bob = next(r for r in asyncio.run(data.find(ListQuery())).sessions if r["user_id"] == "bob@example.com")
    row = summary(bob)
    assert "events" not in row and "data" not in row
    assert (row["online"], row["error_count"], row["event_count"]) == (False, 1, 4)
    alice = next(r for r in asyncio.run(data.find(ListQuery())).sessions if r["user_id"] == "alice@example.com")
    full = detail(alice)
    assert (full["online"], full["close_reason"], full["error_count"]) == (True, None, 0)
    assert full["heartbeat_count"] == 1 and len(full["events"]) == 4


# -- dashboard numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_ms", "expected"),
    [
        (HOUR_MS, MINUTE_MS),
        (61 * MINUTE_MS, 2 * MINUTE_MS),
        (6 * HOUR_MS, 10 * MINUTE_MS),
        (DAY_MS, 30 * MINUTE_MS),
        (7 * DAY_MS, 3 * HOUR_MS),
        (30 * DAY_MS, 12 * HOUR_MS),
        (400 * DAY_MS, 7 * DAY_MS),
        (10_000 * DAY_MS, 167 * DAY_MS),
    ],
)
def test_bucket_size_is_round_and_gives_at_most_60_buckets(range_ms: int, expected: int) -> None:
    assert bucket_ms(range_ms) == expected
    assert -(-range_ms // expected) <= 60


def test_stats_of_the_demo_hour() -> None:
    _, data = demo_store()
    since, until = NOW - 60 * MIN, NOW
    records, partial = asyncio.run(data.started_between(None, since, until))
    numbers = compute(records, since, until)
    assert not partial
    assert {k: numbers[k] for k in ("sessions", "online", "closed", "users", "with_errors", "errors")} == {
        "sessions": 4, "online": 2, "closed": 2, "users": 3, "with_errors": 1, "errors": 1,
    }  # dave started before the hour; the anonymous session has no user
    assert numbers["sessions_per_hour"] == 4.0
    assert numbers["avg_duration_ms"] == (4 * MIN + 3 * MIN) // 2
    assert numbers["bucket_ms"] == MINUTE_MS
    series = numbers["series"]
    assert len(series) == 61 and series[0]["start"] == format_ms(since)
    assert sum(b["sessions"] for b in series) == 4
    assert series[10] == {"start": format_ms(since + 10 * MIN), "sessions": 1, "users": 1}  # bob


def test_stats_of_one_project_and_an_empty_range() -> None:
    _, data = demo_store()
    records, _ = asyncio.run(data.started_between("shop", NOW - 2 * HOUR_MS, NOW))
    numbers = compute(records, NOW - 2 * HOUR_MS, NOW)
    assert (numbers["sessions"], numbers["users"], numbers["online"]) == (3, 3, 1)
    assert numbers["sessions_per_hour"] == 1.5
    records, _ = asyncio.run(data.started_between(None, NOW + HOUR_MS, NOW + 2 * HOUR_MS))
    numbers = compute(records, NOW + HOUR_MS, NOW + 2 * HOUR_MS)
    assert (numbers["sessions"], numbers["avg_duration_ms"], numbers["users"]) == (0, None, 0)
    assert all(b["sessions"] == 0 for b in numbers["series"])
