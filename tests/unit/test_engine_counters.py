"""The engine's counters: what the worker reports per batch (``BatchStats.counters``)."""

from __future__ import annotations

from helpers import MIN, TIMEOUT_MS, advance, engine, ev, feed

from pipeline.core.event import END


def test_clamped_event_is_counted() -> None:
    # SPEC section 3: an event time too far ahead is clamped (by the parser) and counted
    eng = engine()
    feed(eng, [ev(at=0), ev(at=MIN, clamped=True), ev(at=2 * MIN, clamped=True)])
    assert eng.counters["clamped_events"] == 2


def test_duplicate_of_closed_session_and_clamped_are_both_counted() -> None:
    eng = engine()
    feed(eng, [ev(at=0, id="e1"), ev(END, at=MIN)])
    feed(eng, [ev(at=0, arrival=2 * MIN, id="e1", clamped=True)])
    assert eng.counters["clamped_events"] == 1
    assert eng.counters["duplicate_events_closed"] == 1


def test_opened_and_closed_are_counted_by_reason() -> None:
    eng = engine()
    feed(eng, [ev(at=0, user="a"), ev(END, at=MIN, user="a"), ev(at=0, user="b")])
    advance(eng, TIMEOUT_MS + 1)
    assert eng.counters["opened"] == 2
    assert (eng.counters["closed_ended"], eng.counters["closed_timeout"]) == (1, 1)


def test_rejected_sessionend_is_counted() -> None:
    eng = engine()
    eng.apply(ev(END))
    assert eng.counters["rejected_end_without_session"] == 1
