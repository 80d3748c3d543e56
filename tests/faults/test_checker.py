"""The offline checker on its own (no services): it passes a faithful output and names
every kind of breach in an unfaithful one."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from pipeline.core.rules import SessionRules
from pipeline.devtools.checker import CheckReport, Expected, Live, RawRecord, compare, replay
from pipeline.devtools.traffic import TrafficModel
from pipeline.worker.routing import Router

pytestmark = pytest.mark.routine

PARTITIONS = 4
RULES = SessionRules(inactivity_timeout_ms=10_000, reopen_grace_ms=30_000, max_events_per_session=100_000)
START_MS = 1_780_000_000_000


@pytest.fixture(scope="module")
def log() -> list[RawRecord]:
    model = TrafficModel(40, 3, START_MS, bad_ratio=0.05, duplicate_ratio=0.05, think_median_s=2.0,
                         think_max_s=6.0, heartbeat_interval_ms=5_000, session_median_s=20.0,
                         session_max_s=40.0, offline_mean_s=10.0, offline_min_after_abandon_s=15.0)
    router = Router(PARTITIONS)
    offsets = [0] * PARTITIONS
    records = []
    for i, (key, value, ts) in enumerate(model.preload(1_500, drain=True).records):
        p = router.partition_of(key.decode()) if key is not None else i % PARTITIONS
        records.append(RawRecord("events", p, offsets[p], key, value, ts))
        offsets[p] += 1
    return sorted(records, key=lambda r: (r.partition, r.offset))


@pytest.fixture(scope="module")
def expected(log: list[RawRecord]) -> Expected:
    return replay(log, partitions=PARTITIONS, rules=RULES)


def raw(topic: str, value: dict[str, Any] | bytes, n: int) -> RawRecord:
    blob = value if isinstance(value, bytes) else orjson.dumps(value)
    return RawRecord(topic, 0, n, None, blob, 0)


def faithful(exp: Expected) -> tuple[list[RawRecord], list[RawRecord]]:
    """What a perfect pipeline writes: every record of the core once, every rejection once."""
    sessions = [raw("sessions", rec, n) for n, rec in enumerate(exp.records)]
    letters = [raw("dlq", {"error": code, "partition": p, "offset": o, **({} if i is None else {"index": i})}, n)
               for n, ((p, o, i), code) in enumerate(exp.dead_letters.items())]
    return sessions, letters


def check(exp: Expected, sessions: list[RawRecord], letters: list[RawRecord]) -> CheckReport:
    return compare(exp, Live.from_records(sessions, letters))


def test_the_load_has_what_the_checks_need(expected: Expected) -> None:
    assert len(expected.final) > 20
    assert expected.dead_letters
    assert sum(len(c) > 1 for c in expected.occurrences.values()) > 5  # duplicate ids


def test_a_faithful_output_passes(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    report = check(expected, sessions + sessions[:5], letters + letters[:3])  # identical repeats
    assert report.ok, report.problems
    assert (report.lost, report.doubled, report.duplicate_session_records, report.duplicate_dead_letters) == (0, 0, 5, 3)
    assert report.exact_sessions == len(expected.final)


def test_a_missing_session_is_lost_events(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    victim = next(rec for rec in expected.final.values() if rec["events"])
    kept = [r for r in sessions if orjson.loads(r.value or b"")["session_id"] != victim["session_id"]]
    report = check(expected, kept, letters)
    assert not report.ok
    assert report.missing_sessions == 1
    assert report.lost >= len(victim["events"])


def test_repeats_that_differ_are_named(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    changed = dict(orjson.loads(sessions[0].value or b""))
    changed["event_count"] += 1
    report = check(expected, [*sessions, raw("sessions", changed, len(sessions))], letters)
    assert report.differing_duplicates == 1
    assert any("differ" in p for p in report.problems)


def test_a_higher_revision_with_the_same_content_is_allowed_and_counted(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    final = next(iter(expected.final.values()))
    amended = {**final, "revision": final["revision"] + 1}
    report = check(expected, [*sessions, raw("sessions", amended, len(sessions))], letters)
    assert report.ok, report.problems
    assert report.revision_only == 1


def test_an_event_in_two_sessions_is_doubled(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    donor, other = [rec for rec in expected.final.values() if rec["events"]][:2]
    stolen = {**other, "revision": other["revision"] + 1, "events": [*other["events"], donor["events"][0]]}
    report = check(expected, [*sessions, raw("sessions", stolen, len(sessions))], letters)
    assert report.doubled == 1
    assert report.mismatched_sessions == 1


def test_a_missing_dead_letter_is_named(expected: Expected) -> None:
    sessions, letters = faithful(expected)
    report = check(expected, sessions, letters[1:])
    assert any("missing from the dead-letter topic" in p for p in report.problems)


def test_replay_clamps_a_far_future_record_timestamp_as_the_workers_do() -> None:
    rules = SessionRules(inactivity_timeout_ms=60_000, max_future_skew_ms=10_000)

    def rec(offset: int, user: str, kind: str, at_ms: int, arrival_ms: int) -> RawRecord:
        value = orjson.dumps({"type": kind, "timestamp": at_ms, "user_id": user, "id": f"{user}{offset}"})
        return RawRecord("events", 0, offset, user.encode(), value, arrival_ms)

    ten_years_ms = 10 * 365 * 86_400_000
    log = [
        rec(0, "alice", "session", START_MS, START_MS),
        rec(1, "mallory", "usage", START_MS + ten_years_ms, START_MS + ten_years_ms),  # forged
        rec(2, "alice", "usage", START_MS + 1_000, START_MS + 1_000),
    ]
    exp = replay(log, partitions=1, rules=rules, wall_ms=START_MS)
    alice = [r for r in exp.final.values() if r["user_id"] == "alice"]
    assert [(r["event_count"], r["close_reason"]) for r in alice] == [(2, "timeout")]
