"""The bench's per-goal CPU budget: the arithmetic behind "what each goal leaves the worker"."""

from __future__ import annotations

import pytest

from bench import report


def results(quix: float | None = 10_000.0) -> dict:
    contenders = {
        "a": {"events_per_s": 160_000.0, "cpu_s_per_100k": 0.5, "peak_rss_bytes": 2**26},
        "d": {"events_per_s": 25_000.0, "cpu_s_per_100k": 3.0, "redis_cpu_s_per_100k": 1.0,
              "broker_cpu_s_per_100k": 0.2, "peak_rss_bytes": 2**29, "seconds": 20.0,
              "threads": {"main_cpu_us_per_event": 28.0, "main_busy": 0.7, "others_busy": 0.1,
                          "others_cpu_us_per_event": 3.0}},
    }
    if quix is not None:
        contenders["b"] = {"events_per_s": quix, "cpu_s_per_100k": 7.0, "peak_rss_bytes": 2**28}
    return {"contenders": contenders, "machine": {"cores": 2}}


def test_each_goal_gets_the_machine_share_left_after_redis_broker_and_decoding() -> None:
    r = results()
    report.derive(r)
    spent = r["budget"]
    rows = {row["goal"]: row for row in spent["goals"]}
    assert list(rows) == ["events_per_s", "vs_quix", "vs_raw"]
    # 50k events/s on 2 cores: 40 µs per event; Redis 10, broker 2, decoding 5 take 17
    fifty = rows["events_per_s"]
    assert fifty["machine_us_per_event"] == pytest.approx(40.0)
    assert fifty["worker_left_us_per_event"] == pytest.approx(23.0)
    assert fifty["main_thread_us_per_event"] == pytest.approx(20.0)
    # 6x a Quix of 10k: 60k events/s, 33.3 µs per event, 16.3 left
    assert rows["vs_quix"]["events_per_s"] == pytest.approx(60_000)
    assert rows["vs_quix"]["worker_left_us_per_event"] == pytest.approx(2e6 / 60_000 - 17)
    # a quarter of a raw 160k: 40k events/s
    assert rows["vs_raw"]["events_per_s"] == pytest.approx(40_000)
    assert rows["vs_raw"]["main_thread_us_per_event"] == pytest.approx(25.0)
    # the worker now, on the same terms: 30 µs per event less the 5 of decoding
    assert spent["worker_now_us_per_event"] == pytest.approx(25.0)
    assert spent["main_thread_now_us_per_event"] == 28.0
    table = report.markdown(r)
    assert "| 6x Quix | 60,000 | 33.3 | 10.0 | 2.0 | 5.0 | 16.3 | 16.7 |" in table


def test_without_quix_the_other_goals_still_get_their_budget() -> None:
    r = results(quix=None)
    report.derive(r)
    assert [row["goal"] for row in r["budget"]["goals"]] == ["events_per_s", "vs_raw"]


def test_no_budget_without_the_worker_or_the_raw_consumer() -> None:
    r = results()
    del r["contenders"]["a"]
    report.derive(r)
    assert r["budget"] is None
