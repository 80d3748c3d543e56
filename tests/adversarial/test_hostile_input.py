"""Hostile input against two real workers, a gateway, the test broker and Redis.

Interleaved with normal traffic on every partition: JSON 300 levels deep (alone and as
one element of a batch), 260-deep unknown fields, invalid UTF-8, null values, a 100 KB ``user_id``, dates ``1e20`` and
``0001-01-01T00:00:00+01:00``; the same through the gateway. Then: every normal
user's session equals what the offline core makes of the input log
(:func:`pipeline.devtools.checker.check_pipeline`), every rejected record has its dead letter
(by partition and offset), every outgoing message is under 1 MiB, both workers are
alive and the consumer lag is 0.

The cases that rest on the worker's outgoing limits (record timestamps far ahead or
past year 9999, a session of 20 events of 60 KB, 200 KB of control bytes whose dead
letter must be cut to size) have tests of their own below.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
from adversarial_cluster import ONE_MIB, Cluster

from pipeline.devtools.checker import check_pipeline, read_topic
from pipeline.worker.routing import Router

PARTITIONS = 4
DEEP = 300


def deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def event(user: str, at_ms: int, etype: str = "usage", **fields: Any) -> dict[str, Any]:
    return {"type": etype, "timestamp": at_ms, "user_id": user, **fields}


def users_by_partition(count: int, stem: str) -> dict[int, list[str]]:
    router, found = Router(PARTITIONS), defaultdict(list)
    for i in range(10_000):
        user = f"{stem}-{i}"
        p = router.partition_of(user)
        if len(found[p]) < count:
            found[p].append(user)
        if all(len(found[q]) == count for q in range(PARTITIONS)):
            break
    return dict(found)


def hostile_records(now_ms: int, p: int) -> list[tuple[str, bytes | None, bytes | None]]:
    """``(label, key, value)`` records no worker may choke on, for partition ``p``:
    every one is dead-lettered (the batch's good element aside)."""
    ok_user = f"batch-user-{p}"
    user_json = b'{"type":"usage","timestamp":%d,"user_id":"hostile-%d"' % (now_ms, p)
    return [
        ("300 deep", None, user_json + b',"data":' + deep(DEEP) + b"}"),
        ("300 deep in a batch", None,
         b"[" + orjson.dumps(event(ok_user, now_ms, id=f"b{p}")) + b"," + user_json
         + b',"data":' + deep(DEEP) + b"}]"),
        ("260 deep unknown field", None, user_json + b',"extra":' + deep(260) + b"}"),
        ("invalid UTF-8", b"\xff\xfe", b'{"type":"usage","user_id":"\xc3\x28","timestamp":1}'),
        ("null value", b"tombstone", None),
        ("null fields", None, orjson.dumps({"type": None, "timestamp": None, "user_id": None})),
        ("null type", None, user_json.replace(b'"usage"', b"null") + b"}"),
        ("100 KB user_id", None, orjson.dumps(event("u" * 100_000, now_ms))),
        ("timestamp 1e20", None, orjson.dumps(event(f"hostile-{p}", 0) | {"timestamp": 1e20})),
        ("timestamp year 1", None,
         orjson.dumps(event(f"hostile-{p}", 0) | {"timestamp": "0001-01-01T00:00:00+01:00"})),
    ]


def exceptionless(user: str, date: object, etype: str = "usage", **fields: Any) -> dict[str, Any]:
    return {"type": etype, "date": date, "source": "adversarial",
            "data": {"@user": {"identity": user, "name": user}, **fields}}


def test_hostile_records_are_dead_lettered_and_normal_sessions_are_exact(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(topic_partitions=PARTITIONS)
    cluster.start_workers(2)
    cluster.start_gateway()
    settings = cluster.settings
    now_ms = int(time.time() * 1000)

    # -- through Kafka: normal users and hostile records, interleaved per partition ----
    normal = users_by_partition(4, "user")
    records: list[tuple[bytes | None, bytes | None, int, int]] = []
    labels: dict[int, str] = {}  # position in ``records`` -> what is hostile about it
    for step in range(3):
        for p in range(PARTITIONS):
            for user in normal[p]:
                etype = "session" if step == 0 else "usage"
                value = orjson.dumps(event(user, now_ms + step * 200, etype, id=f"{user}-{step}"))
                records.append((user.encode(), value, now_ms + step * 200, p))
            for label, key, value in hostile_records(now_ms, p)[step::3]:
                labels[len(records)] = label
                records.append((key, value, now_ms + step * 200, p))
    placed = cluster.publish(records)

    # -- through the gateway: the same in Exceptionless batches ------------------------
    date = "2026-01-01T00:00:00Z"
    gw_date = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms / 1000)) + "Z"
    bad_events: list[tuple[str, bytes]] = [
        ("date 1e20", orjson.dumps(exceptionless("gw-bad", 1e20))),
        ("date year 1", orjson.dumps(exceptionless("gw-bad", "0001-01-01T00:00:00+01:00"))),
        ("300 deep", b'{"type":"usage","data":{"@user":{"identity":"gw-deep"},"x":'
         + deep(DEEP) + b"}}"),
        ("260 deep unknown field", b'{"type":"usage","data":{"@user":{"identity":"gw"}},"x":'
         + deep(260) + b"}"),
        ("100 KB identity", orjson.dumps(exceptionless("u" * 100_000, gw_date))),
        ("null", b"null"),
        ("user name 257", orjson.dumps(
            {"type": "usage", "data": {"@user": {"identity": "gw", "name": "n" * 257}}})),
    ]
    gateway_users = [f"gw-user-{i}" for i in range(4)]
    rejected_total = 0
    for i, user in enumerate(gateway_users):
        good = [orjson.dumps(exceptionless(user, gw_date, "session")),
                orjson.dumps(exceptionless(user, gw_date, "usage", step=1))]
        batch = b"[" + b",".join([good[0], *[v for _, v in bad_events[i::4]], good[1]]) + b"]"
        status, answer = cluster.post("/api/v2/events", batch)
        assert status == 202, (status, answer)
        assert answer["accepted"] == 2, answer
        assert all(r["error"] == "invalid_event" and r["detail"] for r in answer["rejected"])
        rejected_total += len(answer["rejected"])
    assert rejected_total == len(bad_events)
    # one event alone, 300 deep: refused alone, as in a batch (Exceptionless clients drop a
    # batch answered 400)
    status, answer = cluster.post("/api/v2/events", b'{"type":"usage","data":{"@user":'
                                  b'{"identity":"gw-deep"},"x":' + deep(DEEP) + b"}}")
    assert status == 202 and answer["accepted"] == 0, answer
    assert [r["error"] for r in answer["rejected"]] == ["invalid_event"], answer
    for label, body in [("2000 deep", deep(2000)),
                        ("control bytes", bytes(range(1, 32)) * 6600),
                        ("invalid UTF-8", b'[{"type":"\xc3\x28"}]'), ("a number", b"12")]:
        status, answer = cluster.post("/api/v2/events", body)
        assert 400 <= status < 500, (label, status, answer)
        assert answer["error"] and answer["message"], (label, answer)
    status, metrics = cluster.get_text("/metrics")
    assert status == 200
    assert f'sessionizer_gateway_events_rejected_total{{reason="invalid_event"}} ' \
        f"{float(rejected_total + 1)}" in metrics
    status, answer = cluster.post("/v1/events", orjson.dumps(
        [{"type": "usage", "timestamp": date, "user_id": "x", "sent_at": 10**19}]))
    assert (status, answer["error"]) == (400, "invalid_event"), answer

    # -- drain, then check ----------------------------------------------------------------
    lag, left = cluster.drain(timeout_s=90)
    assert all(w.running for w in cluster.workers), cluster.logs()
    assert lag == 0, f"consumer lag {lag}\n{cluster.logs()}"
    assert not any(left.values()), f"Redis still holds {left}\n{cluster.logs()}"

    report = check_pipeline(settings, timeout_s=60)
    assert report.ok, f"{report.problems}\n{cluster.logs()}"

    letters = [orjson.loads(r.value) for r in read_topic(settings.kafka_bootstrap,
                                                         settings.dlq_topic, timeout_s=60)]
    lettered = {(d["partition"], d["offset"]) for d in letters}
    for position, label in labels.items():
        where = (placed[position].partition, placed[position].offset)
        assert where in lettered, f"{label} at {where} has no dead letter"

    sessions = [orjson.loads(r.value) for r in read_topic(settings.kafka_bootstrap,
                                                          settings.sessions_topic, timeout_s=60)]
    by_user = defaultdict(list)
    for s in sessions:
        by_user[s["user_id"]].append(s)
    for users in normal.values():
        for user in users:
            [s] = by_user[user]
            assert s["event_count"] == 3, s
    for user in gateway_users:
        [s] = by_user[user]
        assert s["event_count"] == 2, s

    for topic in (settings.sessions_topic, settings.dlq_topic, settings.updates_topic):
        for r in read_topic(settings.kafka_bootstrap, topic, timeout_s=60):
            size = len(r.value or b"") + len(r.key or b"")
            assert size < ONE_MIB, f"{topic} {r.partition}:{r.offset} is {size} bytes"
    assert all(w.running for w in cluster.workers), cluster.logs()


# -- the cases that rest on the worker's outgoing limits ---------------------------------

def test_record_timestamps_far_ahead_do_not_close_other_sessions(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(topic_partitions=PARTITIONS)
    cluster.start_workers(2)
    now_ms = int(time.time() * 1000)
    normal = users_by_partition(2, "user")
    ten_years_ms = 10 * 365 * 86_400_000
    records: list[tuple[bytes | None, bytes | None, int, int]] = []
    for p in range(PARTITIONS):
        for user in normal[p]:
            records.append((user.encode(), orjson.dumps(event(user, now_ms, "session", id=f"{user}-0")),
                            now_ms, p))
        far = f"far-{p}"
        records.append((None, orjson.dumps(event(far, now_ms)), now_ms + ten_years_ms, p))
        records.append((None, orjson.dumps(event(far, now_ms)), 253_402_300_800_000 + 10**6, p))
    cluster.publish(records)
    time.sleep(1.0)  # the far-ahead records are read before the users' next events
    later = int(time.time() * 1000)
    cluster.publish([(user.encode(), orjson.dumps(event(user, later, id=f"{user}-1")), later, p)
                     for p in range(PARTITIONS) for user in normal[p]])
    lag, _left = cluster.drain(timeout_s=60)
    assert lag == 0 and all(w.running for w in cluster.workers), cluster.logs()
    sessions = [orjson.loads(r.value) for r in read_topic(
        cluster.settings.kafka_bootstrap, cluster.settings.sessions_topic, timeout_s=60)]
    for users in normal.values():
        for user in users:
            mine = [s for s in sessions if s["user_id"] == user]
            assert len(mine) == 1 and mine[0]["event_count"] == 2, mine


def test_a_session_of_20_events_of_60_kb_is_sent_under_1_mib(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(topic_partitions=PARTITIONS)
    cluster.start_workers(2)
    now_ms = int(time.time() * 1000)
    router = Router(PARTITIONS)
    user = "bulky"
    p = router.partition_of(user)
    blob = "x" * 60_000
    cluster.publish([
        (user.encode(), orjson.dumps(event(user, now_ms + i, "session" if i == 0 else "usage",
                                           id=f"bulk-{i}", message=blob)), now_ms + i, p)
        for i in range(20)
    ])
    deadline = time.monotonic() + 60
    sessions: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not sessions:
        time.sleep(2)
        raw = read_topic(cluster.settings.kafka_bootstrap, cluster.settings.sessions_topic,
                         timeout_s=30)
        assert all(len(r.value) < ONE_MIB for r in raw)
        sessions = [orjson.loads(r.value) for r in raw]
    assert all(w.running for w in cluster.workers), cluster.logs()
    [s] = sessions
    assert s["truncated"] is True


def test_a_dead_letter_value_is_cut_to_the_event_size_limit(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(topic_partitions=PARTITIONS)
    cluster.start_workers(2)
    now_ms = int(time.time() * 1000)
    # 200 KB of control bytes: as JSON text (\u0001 ...) six times that in a dead letter
    [meta] = cluster.publish([(None, bytes(range(1, 32)) * 6600, now_ms, 0)])
    deadline = time.monotonic() + 60
    letters: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not letters:
        time.sleep(1)
        letters = [orjson.loads(r.value) for r in read_topic(
            cluster.settings.kafka_bootstrap, cluster.settings.dlq_topic, timeout_s=30)]
    [letter] = letters
    assert (letter["partition"], letter["offset"]) == (meta.partition, meta.offset)
    assert letter["value_truncated"] is True
    assert len(letter["value"]) <= cluster.settings.max_event_bytes
