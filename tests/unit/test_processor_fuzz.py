"""The partition processor under arbitrary input: bytes, JSON (deeply nested too), events
with any field values, record timestamps anywhere in Kafka's range. No exception
escapes, and every input record is accounted for: its events applied or forwarded, its
rejections dead-lettered under its partition and offset."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.event import RejectCode
from pipeline.core.parse import EventParser
from pipeline.core.rules import SessionRules
from pipeline.store.memory import MemoryStore
from pipeline.worker.outbox import DEAD_LETTER, FORWARD, SESSION
from pipeline.worker.processor import PartitionProcessor
from pipeline.worker.routing import Router
from tests.unit.test_processor_memory import RULES, T0, TOPICS, ListSink, Rec, Wall

PARTITIONS = 2
#: The codes parsing gives; the engine adds ``end_without_session`` for applied events.
PARSE_CODES = {RejectCode.INVALID_JSON, RejectCode.INVALID_EVENT, RejectCode.NO_IDENTITY,
               RejectCode.TOO_LARGE, RejectCode.TOO_OLD}
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)

_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10)
)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["type", "timestamp", "user_id", "data", "x"]), children,
                      max_size=4),
    max_leaves=20,
)
_times = (
    INT64 | st.integers(min_value=T0 - 10**9, max_value=T0 + 10**9)
    | st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59.999Z",
                       "2025-11-27T10:00:00Z", "+10000-01-01T00:00:00.000Z", "1e20"])
    | st.just(1e20)
)
_event = st.fixed_dictionaries(
    {
        "type": st.sampled_from(["session", "usage", "heartbeat", "sessionend", "", "x" * 101]),
        "timestamp": _times,
        "user_id": st.sampled_from(["a", "b", "c", "d", "", "u" * 300]),
    },
    optional={
        "sent_at": _times,
        "id": st.sampled_from(["e1", "e2", "e3"]),
        "session_id": st.sampled_from(["session-0001", "bad id", "s"]),
        "user_name": st.text(max_size=3) | st.just("n" * 257),
        "close": st.booleans() | st.none(),
        "data": _json,
    },
)


def _deep(depth: int, leaf: Any) -> bytes:
    return b'{"type":"usage","timestamp":%d,"user_id":"a","data":' % T0 + (
        b"[" * depth + orjson.dumps(leaf) + b"]" * depth
    ) + b"}"


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # an integer past 64 bits
        return b"[]"


_values = st.one_of(
    st.binary(max_size=300),
    _json.map(_encode),
    _event.map(_encode),
    st.lists(_event | _json, min_size=1, max_size=5).map(_encode),
    st.tuples(st.integers(min_value=60, max_value=1100), _scalars).map(lambda t: _deep(*t)),
    st.lists(st.integers(min_value=60, max_value=300), min_size=1, max_size=3).map(
        lambda depths: b"[" + b",".join(_deep(d, 1) for d in depths) + b"]"
    ),
    st.just(b"\x01" * 2000),
    st.none(),
)
_records = st.lists(
    st.tuples(_values, INT64 | st.integers(min_value=T0 - 10**7, max_value=T0 + 10**7)),
    min_size=1,
    max_size=12,
)


PARSER = EventParser(SessionRules(max_event_age_ms=2**62))


def _items(value: bytes | None) -> list[Any]:
    return PARSER.parse(value, arrival_ms=T0, partition=0, offset=0)


async def _drive(batches: list[list[tuple[bytes | None, int]]]) -> None:
    store, sink, wall = MemoryStore(), ListSink(), Wall(T0)
    router = Router(PARTITIONS)
    claim = await store.claim(0)
    proc = PartitionProcessor(claim, rules=RULES, store=store, sink=sink, topics=TOPICS,
                              router=router, wall=wall, cache_keys=100_000)
    records: list[Rec] = []
    applied = 0
    for batch in batches:
        recs = []
        for value, timestamp in batch:
            recs.append(Rec(TOPICS.events, 0, len(records), b"k", value, timestamp))
            records.append(recs[-1])
        stats = await proc.process(recs)
        applied += stats.events
        wall.advance(60_000)
        await proc.tick(caught_up=True)
    await proc.tick(caught_up=True)
    assert proc.applied[TOPICS.events] == len(records) - 1

    letters = [orjson.loads(m.value) for m in sink.sent if m.kind == DEAD_LETTER]
    parse_letters = Counter(
        (d["partition"], d["offset"]) for d in letters if d["error"] in PARSE_CODES
    )
    forwards = Counter(m.origin.rsplit(":", 2)[1] for m in sink.sent if m.kind == FORWARD
                       if m.origin is not None)
    for m in sink.sent:
        assert m.kind in (DEAD_LETTER, FORWARD, SESSION)
        if m.kind != FORWARD:
            orjson.loads(m.value)
    # How many items (events and rejections) a record holds does not depend on its
    # arrival time; which of them are too old, and so dead letters, does.
    total = 0
    for record in records:
        items = len(_items(record.value))
        assert items >= 1
        assert parse_letters[(0, record.offset)] + forwards[str(record.offset)] <= items, record
        total += items
    assert set(parse_letters) <= {(0, r.offset) for r in records}
    assert sum(parse_letters.values()) + sum(forwards.values()) + applied == total


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(st.lists(_records, min_size=1, max_size=3))
def test_any_input_is_applied_forwarded_or_dead_lettered(batches: Any) -> None:
    asyncio.run(_drive(batches))


def test_a_session_dated_past_year_9999_by_its_record_timestamp_goes_through() -> None:
    # sent_at correction carries an in-range timestamp to a record timestamp past 9999.
    late = 253_402_300_799_999
    event = {"type": "session", "timestamp": late, "sent_at": late, "user_id": "a"}
    end = {"type": "sessionend", "timestamp": late, "sent_at": late, "user_id": "a"}
    arrival = late + 10**9
    asyncio.run(_drive([[(orjson.dumps(event), arrival), (orjson.dumps(end), arrival + 1)]]))
