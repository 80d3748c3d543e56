"""The whole pipeline on a scripted log: a ``sessionizer worker`` process, the embedded
broker and redis-server; every closed session and every dead letter checked record by
record against what :mod:`tests.e2e.scripted_log` works out by hand."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from scripted_log import WORKER_SETTINGS, build_log

REPO = Path(__file__).resolve().parents[2]
AUTO_ID = re.compile(r"^[0-9a-f]{32}$")


def session_validator() -> Draft202012Validator:
    schema = json.loads((REPO / "pipeline" / "schemas" / "session.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@pytest.mark.parametrize("redis", ["single", "cluster"])
def test_scripted_log_gives_the_sessions_and_dead_letters_worked_out_by_hand(
    worker_factory, publish, read_topic, redis, request
):
    """On one redis-server, and on the Redis Cluster (3 masters, 3 replicas: the worker
    finds it out with INFO cluster and spreads the partitions' slots over the masters)."""
    where = {}
    if redis == "cluster":
        where["redis_url"] = request.getfixturevalue("redis_cluster").url
    worker = worker_factory(**WORKER_SETTINGS, **where)
    log = build_log(int(time.time() * 1000), partitions=worker.partitions)

    # the whole log is in the topic before the worker starts: it replays it
    ordered = log.in_order()
    placed = publish(
        worker.bootstrap,
        worker.events_topic,
        [(r.key, r.value, r.arrival_ms, r.partition) for _, r in ordered],
    )
    for (label, _), meta in zip(ordered, placed, strict=True):
        log.landed(label, meta.partition, meta.offset)
    worker.start()

    session_records = read_topic(worker.bootstrap, worker.sessions_topic, len(log.sessions),
                                 timeout=60, settle=3)
    letter_records = read_topic(worker.bootstrap, worker.dlq_topic, len(log.dead_letters),
                                timeout=10, settle=0.5)

    # -- closed sessions ---------------------------------------------------------------
    validator = session_validator()
    actual = []
    for record in session_records:
        value = orjson.loads(record.value)
        errors = [e.message for e in validator.iter_errors(value)]
        assert not errors, (value, errors)
        assert record.key == value["session_id"].encode(), "sessions are keyed by session_id"
        actual.append(value)

    def match_key(rec: dict[str, Any]) -> tuple[Any, ...]:
        return (rec["project"], rec["user_id"], rec["start"], rec["revision"])

    expected = {}
    tags = {}
    id_patterns = {}
    for s in log.sessions:
        rec = log.expected_session(s)
        assert match_key(rec) not in expected, f"ambiguous expectation {match_key(rec)}"
        expected[match_key(rec)] = rec
        tags[match_key(rec)] = s.tag
        id_patterns[match_key(rec)] = re.compile(s.session_id_re) if s.session_id_re else AUTO_ID

    got = Counter(match_key(rec) for rec in actual)
    unexpected = [rec for rec in actual if match_key(rec) not in expected]
    assert not unexpected, f"sessions nobody expected: {unexpected}"
    repeated = [key for key, n in got.items() if n > 1]
    assert not repeated, f"sessions emitted more than once: {repeated}"
    missing = [(tags[key], key) for key in expected if key not in got]
    assert not missing, f"sessions missing: {missing}"

    id_of_tag: dict[str, str] = {}
    for rec in actual:
        key = match_key(rec)
        want = dict(expected[key])
        if want["session_id"] is None:
            assert id_patterns[key].match(rec["session_id"]), (tags[key], rec["session_id"])
            want["session_id"] = rec["session_id"]
        assert rec == want, f"session {tags[key]} revision {rec['revision']}"
        id_of_tag.setdefault(tags[key], rec["session_id"])
        assert id_of_tag[tags[key]] == rec["session_id"], f"{tags[key]}: one id for all revisions"
    assert len(set(id_of_tag.values())) == len(id_of_tag), f"session ids not distinct: {id_of_tag}"

    # revisions of a session come in order (same key, same partition)
    seen: dict[str, int] = {}
    for rec in actual:
        assert rec["revision"] == seen.get(rec["session_id"], 0) + 1, rec["session_id"]
        seen[rec["session_id"]] = rec["revision"]

    # -- dead letters ------------------------------------------------------------------
    letters = []
    for record in letter_records:
        value = orjson.loads(record.value)
        assert isinstance(value.pop("detail"), str) and value.get("error")
        want_key = value["key"].encode() if value["key"] is not None else None
        assert record.key == want_key, "a dead letter keeps the original key"
        letters.append(value)
    wanted = [log.expected_dead_letter(d, worker.events_topic) for d in log.dead_letters]

    def letter_key(letter: dict[str, Any]) -> tuple[Any, ...]:
        return (letter["partition"], letter["offset"], letter.get("index"))

    assert sorted(letters, key=letter_key) == sorted(wanted, key=letter_key)
    assert Counter(d["error"] for d in letters) == {
        "invalid_json": 3,
        "invalid_event": 2,
        "no_identity": 2,
        "too_large": 1,
        "too_old": 1,
        "end_without_session": 2,
    }

    # -- determinism: another worker replaying the same log gives the same records -----
    worker.stop()
    replay = worker_factory(**WORKER_SETTINGS, events_topic=worker.events_topic).start()
    again = read_topic(replay.bootstrap, replay.sessions_topic, len(session_records),
                       timeout=60, settle=2)
    letters_again = read_topic(replay.bootstrap, replay.dlq_topic, len(letter_records),
                               timeout=10, settle=0.5)

    def canonical(records: list[Any]) -> list[bytes]:
        return sorted(orjson.dumps(orjson.loads(r.value), option=orjson.OPT_SORT_KEYS)
                      for r in records)

    assert canonical(again) == canonical(session_records)
    assert canonical(letters_again) == canonical(letter_records)

    if redis == "cluster":  # the live state went to the cluster, spread over its masters
        cluster = request.getfixturevalue("redis_cluster")
        client = cluster.client()
        try:
            partitions = {int(p) for p in client.smembers(f"{worker.prefix}:shards")}
            assert partitions == set(range(worker.partitions))
            masters = {cluster.master_of(f"{worker.prefix}:{{p{p}}}:meta").port for p in partitions}
            assert len(masters) > 1, "the partitions' state is on several masters"
        finally:
            client.close()
