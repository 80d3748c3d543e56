"""The traffic model: deterministic, realistic, and honest about what it sent."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.core.timefmt import TimestampError, parse_timestamp_ms
from pipeline.devtools.traffic import BAD_KINDS, HEARTBEAT_INTERVAL_MS, Record, TrafficModel

ROOT = Path(__file__).resolve().parents[2]
START_MS = 1_780_000_000_000
MAX_EVENT_BYTES = 65_536


def model(**overrides: Any) -> TrafficModel:
    args: dict[str, Any] = {"users": 80, "seed": 7, "start_ms": START_MS, "bad_ratio": 0.0}
    args.update(overrides)
    return TrafficModel(**args)


def classify(record: Record) -> str | None:
    """Which bad kind a record is, judged from its bytes alone (None: a good record)."""
    try:
        body = orjson.loads(record.value)
    except orjson.JSONDecodeError:
        return "invalid_json"
    if len(record.value) > MAX_EVENT_BYTES:
        return "too_large"
    events = body if isinstance(body, list) else [body]
    for event in events:
        if not event.get("user_id") and not event.get("session_id"):
            return "no_identity"
        if "type" not in event:
            return "missing_type"
        try:
            parse_timestamp_ms(event["timestamp"])
        except TimestampError:
            return "bad_timestamp"
    return None


def good_events(records: list[Record]) -> Iterator[tuple[Record, dict[str, Any]]]:
    for record in records:
        if classify(record) is None:
            body = orjson.loads(record.value)
            for event in body if isinstance(body, list) else [body]:
                yield record, event


def session_key(event: dict[str, Any]) -> tuple[str, str]:
    return event["project"], event.get("session_id") or event["user_id"]


@pytest.fixture(scope="module")
def traffic() -> tuple[list[Record], TrafficModel]:
    """A default-knob run with bad records, big enough for rates."""
    m = model(users=150, bad_ratio=0.02)
    return m.preload(40_000).records, m


@pytest.fixture(scope="module")
def unbatched() -> tuple[list[Record], TrafficModel]:
    """No batching clients: every out-of-order event is a deliberate one."""
    m = model(users=200, batch_ratio=0.0, duplicate_ratio=0.01, out_of_order_ratio=0.02)
    return m.preload(50_000).records, m


# -- determinism --------------------------------------------------------------


def test_same_seed_gives_identical_records() -> None:
    first = model(bad_ratio=0.02).preload(5_000)
    second = model(bad_ratio=0.02).preload(5_000)
    assert first.records == second.records
    assert first.stats == second.stats
    assert first.sessions == second.sessions


def test_different_seed_gives_different_records() -> None:
    a = model(seed=1).preload(2_000).records
    b = model(seed=2).preload(2_000).records
    assert a != b
    ids_a = {e["id"] for _, e in good_events(a)}
    ids_b = {e["id"] for _, e in good_events(b)}
    assert not ids_a & ids_b


def test_records_come_in_arrival_order_from_the_start(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, _ = traffic
    stamps = [r.timestamp_ms for r in records]
    assert stamps == sorted(stamps)
    assert stamps[0] >= START_MS


def test_preload_stops_at_the_requested_events() -> None:
    m = model()
    loaded = m.preload(3_000)
    assert 3_000 <= loaded.stats.events_sent < 3_000 + 20
    assert loaded.stats.records == len(loaded.records)


def test_wall_offset_follows_speed() -> None:
    m = model(speed=10.0)
    assert m.wall_offset_s(START_MS + 60_000) == pytest.approx(6.0)


@pytest.mark.parametrize(
    "overrides",
    [{"users": 0}, {"speed": 0}, {"bad_ratio": 1.0}, {"end_ratio": 0.8, "close_ratio": 0.3}],
)
def test_bad_knobs_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        model(**overrides)


# -- events ---------------------------------------------------------------------


def test_valid_events_match_the_event_schema(traffic: tuple[list[Record], TrafficModel]) -> None:
    path = next(
        (
            p
            for p in (
                ROOT / "schemas" / "event.schema.json",
                ROOT / "pipeline" / "schemas" / "event.schema.json",
            )
            if p.exists()
        ),
        None,
    )
    if path is None:
        pytest.skip("schemas/event.schema.json is not there yet")
    fastjsonschema = pytest.importorskip("fastjsonschema")
    validate = fastjsonschema.compile(orjson.loads(path.read_bytes()))
    records, _ = traffic
    checked = 0
    for _, event in good_events(records):
        try:
            validate(event)
        except fastjsonschema.JsonSchemaException as exc:
            pytest.fail(f"{exc.message}: {event}")
        checked += 1
    assert checked > 30_000


def test_events_are_realistic(traffic: tuple[list[Record], TrafficModel]) -> None:
    records, m = traffic
    events = [e for _, e in good_events(records)]
    types = Counter(e["type"] for e in events)
    for expected in ("session", "sessionend", "heartbeat", "usage", "log", "error", "404"):
        assert types[expected] > 0, expected
    assert {"purchase", "feedback", "export"} & set(types)
    assert types["usage"] > types["log"] > types["error"]
    assert {e["project"] for e in events} == {"shop", "docs", "admin"}
    assert sum(1 for e in events if e["type"] == "heartbeat" and e.get("close")) > 0

    errors = [e for e in events if e["type"] == "error"]
    for e in errors:
        assert e["source"] == e["data"]["@error"]["type"] and e["message"]
        assert "at " in e["data"]["@error"]["stack_trace"]
    usage = [e for e in events if e["type"] == "usage"]
    assert all(e["source"] and e["data"]["@request"]["user_agent"] for e in usage)
    assert all("@environment" in e["data"] for e in usage)
    assert sum(1 for e in events if e.get("user_name")) > 0.8 * len(events)

    manual_ids = {e["session_id"] for e in events if "session_id" in e}
    assert manual_ids and all(re.fullmatch(r"[0-9a-f]{32}", s) for s in manual_ids)
    stamps = Counter(type(e["timestamp"]).__name__ for e in events)
    assert stamps["str"] and stamps["int"]
    assert any(isinstance(e["timestamp"], str) and e["timestamp"].endswith("Z") for e in events)
    assert any(
        isinstance(e["timestamp"], str) and re.search(r"[+-]\d\d:\d\d$", e["timestamp"])
        for e in events
    )
    assert m.stats.by_type == Counter(e["type"] for e in {e["id"]: e for e in events}.values())


def test_event_ids_are_unique_but_for_duplicates(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, m = traffic
    copies = Counter(e["id"] for _, e in good_events(records))
    assert all(0 < len(i) <= 100 for i in copies)
    assert sum(n - 1 for n in copies.values()) == m.stats.duplicates
    assert len(copies) == m.stats.valid_events


def test_duplicates_are_the_same_event_at_about_the_configured_rate(
    unbatched: tuple[list[Record], TrafficModel],
) -> None:
    records, m = unbatched
    seen: dict[str, dict[str, Any]] = {}
    extra = 0
    for _, event in good_events(records):
        if event["id"] in seen:
            assert seen[event["id"]] == event
            extra += 1
        seen[event["id"]] = event
    assert extra == m.stats.duplicates
    eligible = sum(
        1
        for e in seen.values()
        if e["type"] not in ("session", "sessionend") and not e.get("close")
    )
    assert extra / eligible == pytest.approx(0.01, abs=0.003)


def _out_of_order(records: list[Record]) -> int:
    latest: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    late = 0
    for _, event in good_events(records):
        if event["id"] in seen:
            continue
        seen.add(event["id"])
        key, ts = session_key(event), parse_timestamp_ms(event["timestamp"])
        if ts < latest.get(key, ts):
            late += 1
        latest[key] = max(ts, latest.get(key, ts))
    return late


def test_out_of_order_events_at_about_the_configured_rate(
    unbatched: tuple[list[Record], TrafficModel],
) -> None:
    records, m = unbatched
    late = _out_of_order(records)
    assert late == m.stats.out_of_order
    activity = m.stats.valid_events - sum(
        m.stats.by_type[t] for t in ("heartbeat", "session", "sessionend")
    )
    assert late / activity == pytest.approx(0.02, abs=0.006)


def test_batching_clients_add_disorder_on_top() -> None:
    m = model(users=200, batch_ratio=0.5)
    records = m.preload(15_000).records
    assert _out_of_order(records) > m.stats.out_of_order > 0


def test_out_of_order_events_stay_inside_their_session(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, m = traffic
    firsts: dict[tuple[str, str], list[int]] = defaultdict(list)
    for s in m.sessions:
        firsts[(s.project, s.key)].append(s.first_ms)
    for _, event in good_events(records):
        ts = parse_timestamp_ms(event["timestamp"])
        starts = firsts[session_key(event)]
        assert any(ts >= start for start in starts)


def test_heartbeats_every_30_seconds_of_event_time(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, m = traffic
    spans: dict[tuple[str, str], list[tuple[int, int, int]]] = defaultdict(list)
    for index, s in enumerate(m.sessions):
        spans[(s.project, s.key)].append((s.first_ms, s.last_ms, index))
    beats: dict[int, set[int]] = defaultdict(set)
    for _, event in good_events(records):
        if event["type"] == "heartbeat" and not event.get("close"):
            ts = parse_timestamp_ms(event["timestamp"])
            (index,) = [i for first, last, i in spans[session_key(event)] if first <= ts <= last]
            beats[index].add(ts)
    assert sum(len(stamps) for stamps in beats.values()) > 5_000
    for index, stamps in beats.items():
        ordered = sorted(stamps)
        # counted from the session's first event, one every 30 s while it lasts
        assert ordered[0] == m.sessions[index].first_ms + HEARTBEAT_INTERVAL_MS
        assert all(b - a == HEARTBEAT_INTERVAL_MS for a, b in pairwise(ordered))


def test_some_records_are_batches_of_one_identity(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, m = traffic
    batches = [r for r in records if classify(r) is None and r.value.startswith(b"[")]
    assert len(batches) == m.stats.batch_records > 100
    assert max(len(orjson.loads(r.value)) for r in batches) > 1
    for record in batches:
        assert len({session_key(e) for e in orjson.loads(record.value)}) == 1


def test_keys_route_each_event_to_its_session(traffic: tuple[list[Record], TrafficModel]) -> None:
    records, _ = traffic
    for record, event in good_events(records):
        assert record.key == (event.get("session_id") or event["user_id"]).encode()
    bad_keys = [r.key for r in records if classify(r) is not None]
    assert None in bad_keys and any(k is not None for k in bad_keys)


def test_clock_skew_is_small_and_sent_at_is_on_some(
    traffic: tuple[list[Record], TrafficModel],
) -> None:
    records, _ = traffic
    with_sent_at = without = 0
    for record, event in good_events(records):
        ts = parse_timestamp_ms(event["timestamp"])
        if "sent_at" in event:
            with_sent_at += 1
            skew = parse_timestamp_ms(event["sent_at"]) - record.timestamp_ms
            assert abs(skew) < 130_000
            assert ts <= parse_timestamp_ms(event["sent_at"])
        else:
            without += 1
            # ahead by the skew at most; behind by batching, holds and retries
            assert -120_000 < ts - record.timestamp_ms < 10_000
    assert with_sent_at > 0.1 * (with_sent_at + without)
    assert without > with_sent_at


# -- bad records ------------------------------------------------------------------


def test_bad_records_of_every_kind_and_counted(traffic: tuple[list[Record], TrafficModel]) -> None:
    records, m = traffic
    kinds = Counter(k for k in map(classify, records) if k is not None)
    assert kinds == m.stats.bad
    assert set(kinds) == set(BAD_KINDS)
    assert m.stats.bad_records / m.stats.records == pytest.approx(0.02, abs=0.004)
    codes = m.stats.expected_dead_letters
    assert codes["invalid_event"] == kinds["missing_type"] + kinds["bad_timestamp"]
    assert all(len(r.value) <= MAX_EVENT_BYTES for r in records if classify(r) != "too_large")


def test_no_bad_records_at_ratio_zero() -> None:
    m = model()
    records = m.preload(5_000).records
    assert not any(map(classify, records))
    assert m.stats.bad_records == 0


# -- sessions ---------------------------------------------------------------------


def test_session_bookkeeping_adds_up() -> None:
    m = model(users=100)
    loaded = m.preload(20_000, drain=True)
    stats, sessions = loaded.stats, loaded.sessions
    assert stats.sessions_started == len(sessions) > 200
    assert stats.sessions_ended == sum(s.ended for s in sessions)
    assert stats.sessions_closed_by_heartbeat == sum(s.closed_by_heartbeat for s in sessions)
    assert stats.sessions_manual == sum(s.manual for s in sessions)
    assert sum(s.event_count + s.heartbeat_count for s in sessions) == stats.valid_events
    assert sum(s.duplicates for s in sessions) == stats.duplicates
    # drained: every session ran to its planned end; ~75% ended by the client
    assert stats.sessions_ended / stats.sessions_started == pytest.approx(0.75, abs=0.06)
    assert stats.sessions_closed_by_heartbeat / stats.sessions_started == pytest.approx(
        0.15, abs=0.04
    )
    assert stats.sessions_manual / stats.sessions_started == pytest.approx(0.3, abs=0.06)
    assert sum(s.has_start_event for s in sessions) / len(sessions) == pytest.approx(0.85, abs=0.06)
    assert list(m) == []  # nothing left once drained


def test_the_pure_core_sees_exactly_the_planned_sessions() -> None:
    try:
        from pipeline.core.engine import Sessionizer
        from pipeline.core.event import Event
        from pipeline.core.parse import EventParser
        from pipeline.core.rules import SessionRules
    except ImportError:
        pytest.skip("the core's parser is not there yet")
    m = model(users=120, bad_ratio=0.01)
    loaded = m.preload(20_000, drain=True)
    rules = SessionRules()
    engine = Sessionizer(rules)
    parser = EventParser(rules)
    closed: dict[str, dict[str, Any]] = {}
    rejected: Counter[str] = Counter()
    for offset, record in enumerate(loaded.records):
        for item in parser.parse(record.value, arrival_ms=record.timestamp_ms, partition=0, offset=offset):
            if isinstance(item, Event):
                applied = engine.apply(item)
                assert applied.rejection is None
                closed.update((r["session_id"], r) for r in applied.records)
            else:
                rejected[item.code.value] += 1
    closed.update(
        (r["session_id"], r) for r in engine.advance(loaded.records[-1].timestamp_ms + 10**9)
    )

    assert rejected == loaded.stats.expected_dead_letters
    assert len(closed) == loaded.stats.sessions_started
    assert {r["revision"] for r in closed.values()} == {1}
    expected = Counter(
        (s.project, s.user_id, s.expected_close_reason, s.event_count, s.heartbeat_count)
        for s in loaded.sessions
    )
    got = Counter(
        (r["project"], r["user_id"], r["close_reason"], r["event_count"], r["heartbeat_count"])
        for r in closed.values()
    )
    assert got == expected
    manual = {s.session_id for s in loaded.sessions if s.session_id is not None}
    assert manual <= set(closed)
