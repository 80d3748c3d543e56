"""Revisions never go back (SPEC 4), with real workers, across a partition increase.

A worker sessionizes client-chosen session ids on an events topic of 2 partitions;
some sessions are amended (revision 2). It stops, and a worker on 4 partitions
takes over with the same Redis and the same ``sessions`` topic. (The embedded broker
cannot add partitions to a topic, CreatePartitions being unsupported, so the added
partitions are a new events topic of 4: for the worker's state in Redis, which is
what decides revisions, that is the same move: half the ids now route to a partition
that never saw them.) The clients use their ids again after the reopen grace: every
new session must come out above the revisions its id had.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from pipeline.worker.routing import Router

IDS = [f"client-session-{i:04d}" for i in range(60)]
GRACE_S = 3


def events(sid: str, start_ms: int, arrival_ms: int, *kinds: str, tag: str) -> list[tuple[Any, ...]]:
    out = []
    for step, kind in enumerate(kinds):
        body = {"type": kind, "timestamp": start_ms + step * 1000, "session_id": sid,
                "user_id": f"user-of-{sid}", "project": "shop", "id": f"{sid}-{tag}-{step}"}
        out.append((sid.encode(), orjson.dumps(body), arrival_ms, None))
    return out


@pytest.mark.timeout(600)
def test_revisions_go_on_across_a_partition_increase(
    start_worker: Callable[..., Any], publish: Callable[..., Any], read_topic: Callable[..., Any],
) -> None:
    moved = [sid for sid in IDS if Router(2).partition_of(sid) != Router(4).partition_of(sid)]
    assert 10 < len(moved) < len(IDS) - 10

    old = start_worker(topic_partitions=2, reopen_grace=GRACE_S)
    now = int(time.time() * 1000)
    t1 = now - 10 * 60_000
    publish(old.bootstrap, old.events_topic,
            [r for sid in IDS for r in events(sid, t1, now, "session", "usage", "sessionend", tag="a")])
    amended = IDS[::2]
    publish(old.bootstrap, old.events_topic,
            [r for sid in amended for r in events(sid, t1 + 500, now, "error", tag="late")])
    read_topic(old.bootstrap, old.sessions_topic, len(IDS) + len(amended), timeout=120, settle=0)
    time.sleep(GRACE_S + 3)  # the closed sessions leave the grace: their ids may begin anew
    old.stop()

    # "partitions added": 4 partitions now, the same Redis state and sessions topic
    new = start_worker(topic_partitions=4, reopen_grace=GRACE_S, sessions_topic=old.sessions_topic,
                       redis_key_prefix=old.prefix)
    now = int(time.time() * 1000)
    publish(new.bootstrap, new.events_topic,
            [r for sid in IDS for r in events(sid, now - 60_000, now, "session", "sessionend", tag="b")])

    records = read_topic(new.bootstrap, new.sessions_topic, 2 * len(IDS) + len(amended),
                         timeout=180, settle=3)
    history: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for message in records:  # one sessions partition per id: in the order written
        rec = orjson.loads(message.value)
        history[(rec["project"], rec["session_id"])].append(rec["revision"])
    assert set(history) == {("shop", sid) for sid in IDS}
    for sid in IDS:
        first = [1, 2] if sid in amended else [1]
        assert history[("shop", sid)] == [*first, first[-1] + 1], (sid, sid in moved)
