"""How the gateway reads a heartbeat's id, ended sessions, and the rate limiter."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.exceptions import EventError
from pipeline.gateway.ids import HeartbeatTarget, IdMemory
from pipeline.ratelimit import RateLimiter

SESSION = "66e634246cc3414faed6531eb988749a"
T0 = 1_795_758_300_000


def event(
    type: str = "usage", *, at: str = "2026-11-27T05:45:00.000Z", **fields: Any
) -> dict[str, Any]:
    return {"type": type, "timestamp": at, "project": "shop", **fields}


# -- heartbeat id rules ------------------------------------------------------------


def test_an_unseen_session_shaped_id_is_a_session_id() -> None:
    # The real client's heartbeat can come before the batch holding the session start.
    assert IdMemory().resolve_heartbeat("shop", SESSION) == HeartbeatTarget(SESSION, None, None)


def test_an_unseen_id_outside_the_session_format_is_a_user_identity() -> None:
    for raw in ("alice@example.com", "bob", "a b c d e f g h"):
        assert IdMemory().resolve_heartbeat("shop", raw) == HeartbeatTarget(None, raw, None)


def test_a_seen_session_id_carries_its_user() -> None:
    ids = IdMemory()
    ids.observe(
        event(session_id=SESSION, user_id="alice@example.com", user_name="Alice"), received_ms=T0
    )
    assert ids.resolve_heartbeat("shop", SESSION) == HeartbeatTarget(
        SESSION, "alice@example.com", "Alice"
    )
    # another project has not seen it with a user
    assert ids.resolve_heartbeat("blog", SESSION) == HeartbeatTarget(SESSION, None, None)


def test_a_seen_identity_that_looks_like_a_session_id_stays_a_user_identity() -> None:
    ids = IdMemory()
    ids.observe(event(user_id="alice1234", user_name="Alice"), received_ms=T0)
    assert ids.resolve_heartbeat("shop", "alice1234") == HeartbeatTarget(None, "alice1234", "Alice")
    assert ids.resolve_heartbeat("blog", "alice1234") == HeartbeatTarget("alice1234", None, None)


def test_the_user_name_is_kept_when_later_events_have_none() -> None:
    ids = IdMemory()
    ids.observe(event(session_id=SESSION, user_id="a", user_name="Alice"), received_ms=T0)
    ids.observe(event(session_id=SESSION), received_ms=T0)
    assert ids.resolve_heartbeat("shop", SESSION).user_name == "Alice"


def test_empty_or_overlong_ids_are_refused() -> None:
    with pytest.raises(EventError):
        IdMemory().resolve_heartbeat("shop", "")
    with pytest.raises(EventError):
        IdMemory().resolve_heartbeat("shop", "x@" * 200)


def test_memory_is_bounded_least_recently_used_first() -> None:
    ids = IdMemory(capacity=2)
    for user in ("user-aaaa", "user-bbbb", "user-cccc"):
        ids.observe(event(user_id=user), received_ms=T0)
    # user-aaaa was forgotten: it falls back to the format rule (a session id)
    assert ids.resolve_heartbeat("shop", "user-aaaa").session_id == "user-aaaa"
    assert ids.resolve_heartbeat("shop", "user-cccc").user_id == "user-cccc"


# -- ended sessions ----------------------------------------------------------------


def target(ids: IdMemory, raw: str) -> HeartbeatTarget:
    return ids.resolve_heartbeat("shop", raw)


def test_a_close_heartbeat_marks_the_session_ended() -> None:
    ids = IdMemory()
    assert not ids.has_ended("shop", target(ids, SESSION))
    ids.observe(event("heartbeat", session_id=SESSION, close=True), received_ms=T0)
    assert ids.has_ended("shop", target(ids, SESSION))
    assert not ids.has_ended("blog", target(ids, SESSION))


def test_a_sessionend_marks_ended_and_a_new_start_clears_it() -> None:
    ids = IdMemory()
    ids.observe(event("sessionend", session_id=SESSION), received_ms=T0)
    assert ids.has_ended("shop", target(ids, SESSION))
    ids.observe(event("session", session_id=SESSION, at="2026-11-27T05:40:00Z"), received_ms=T0)
    assert not ids.has_ended("shop", target(ids, SESSION))


def test_late_events_of_the_ended_session_keep_it_ended_later_ones_clear_it() -> None:
    ids = IdMemory()
    ids.observe(event("heartbeat", session_id=SESSION, close=True), received_ms=T0)
    ids.observe(event(session_id=SESSION, at="2026-11-27T05:44:59.000Z"), received_ms=T0 + 10)
    assert ids.has_ended("shop", target(ids, SESSION))
    ids.observe(event("heartbeat", session_id=SESSION), received_ms=T0 + 20)
    assert ids.has_ended("shop", target(ids, SESSION))
    ids.observe(event(session_id=SESSION, at="2026-11-27T05:45:01.000Z"), received_ms=T0 + 30)
    assert not ids.has_ended("shop", target(ids, SESSION))


def test_identity_sessions_end_too() -> None:
    ids = IdMemory()
    ids.observe(event(user_id="alice@example.com"), received_ms=T0)
    ids.observe(event("heartbeat", user_id="alice@example.com", close=True), received_ms=T0)
    assert ids.has_ended("shop", target(ids, "alice@example.com"))


# -- rate limiter ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.5)
    assert limiter.acquire("other") == 0.0  # per key
    clock.now += 0.5
    assert limiter.acquire("k") == 0.0
    assert limiter.acquire("k") > 0
    clock.now += 100
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]  # refills up to the burst
    assert limiter.acquire("k") > 0


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert all(limiter.acquire("k") == 0.0 for _ in range(1000))
