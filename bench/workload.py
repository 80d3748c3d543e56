"""The benchmark's input: a seeded workload from :mod:`pipeline.devtools.traffic`, cached, published fast.

The workload is what ``TrafficModel(users, seed, start_ms).preload(events)`` gives:
sessions with usage, error, log, 404 and custom events, a heartbeat every 30 s of
event time, explicit ends (``sessionend``, closing heartbeats) and abandoned
sessions (closed by timeout), client batches, duplicates, out-of-order (late)
events and a few bad records. Generating 500,000 events takes about half a minute,
so the result is cached on disk (keyed by the arguments and the source of
``pipeline/devtools/traffic.py``).

Records are published with confluent-kafka (librdkafka: ~100k records/s here,
where kafka-python manages ~5k), each to the partition Kafka's default
partitioner (murmur2) gives its key, as the gateway and the client do.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.core.timefmt import parse_timestamp_ms
from pipeline.devtools import traffic
from pipeline.devtools.traffic import Record, TrafficModel
from pipeline.worker.routing import Router

#: 2026-01-01T00:00:00Z: the replayed workload's clock starts here (fixed, so runs repeat)
DEFAULT_START_MS = 1_767_225_600_000
DEFAULT_SEED = 20_260_101


@dataclass
class Workload:
    users: int
    events: int
    seed: int
    start_ms: int
    records: list[Record]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def events_total(self) -> int:
        """Events on the wire: a batch record counts its elements, a bad record one."""
        return int(self.summary["events_sent"])

    @property
    def records_total(self) -> int:
        return len(self.records)


def _cache_dir() -> Path:
    base = os.environ.get("SESSIONIZER_BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sessionizer-bench"
    )
    return Path(base)


def _source_hash() -> str:
    return hashlib.blake2b(Path(traffic.__file__).read_bytes(), digest_size=6).hexdigest()


def build(users: int, events: int, seed: int = DEFAULT_SEED, start_ms: int = DEFAULT_START_MS,
          *, cache: bool = True) -> Workload:
    """The workload for these arguments (from the cache when it was built before)."""
    path = _cache_dir() / f"workload-u{users}-e{events}-s{seed}-t{start_ms}-{_source_hash()}.pickle"
    if cache and path.exists():
        try:
            with path.open("rb") as fh:
                loaded = pickle.load(fh)
            if isinstance(loaded, Workload):
                return loaded
        except Exception:  # a torn or foreign file: build it again
            pass
    started = time.perf_counter()
    model = TrafficModel(users, seed, start_ms)
    pre = model.preload(events)
    stats = pre.stats
    records = pre.records
    summary: dict[str, Any] = {
        "records": len(records),
        "batch_records": stats.batch_records,
        "events_sent": stats.events_sent,
        "valid_events": stats.valid_events,
        "heartbeats": stats.heartbeats,
        "by_type": dict(stats.by_type.most_common()),
        "duplicates": stats.duplicates,
        "out_of_order": stats.out_of_order,
        "bad_records": stats.bad_records,
        "bad": dict(stats.bad),
        "sessions_started": stats.sessions_started,
        "sessions_manual": stats.sessions_manual,
        "sessions_ended_by_client": stats.sessions_ended,
        "sessions_closed_by_heartbeat": stats.sessions_closed_by_heartbeat,
        "bytes": sum(len(r.value) for r in records),
        "arrival_span_s": round((records[-1].timestamp_ms - records[0].timestamp_ms) / 1000, 1)
        if records else 0.0,
        "generate_s": round(time.perf_counter() - started, 1),
    }
    work = Workload(users, events, seed, start_ms, records, summary)
    if cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with tmp.open("wb") as fh:
                pickle.dump(work, fh, protocol=pickle.HIGHEST_PROTOCOL)
            tmp.replace(path)
        except OSError:
            pass
    return work


def partition_for(router: Router, key: bytes | None, n: int) -> int:
    """Kafka's default partitioner for a key (murmur2); keyless records round robin."""
    if key is None:
        return n % router.partitions
    return router.partition_of(key.decode("utf-8", "replace"))


def producer(bootstrap: str, **extra: Any) -> Any:
    from confluent_kafka import Producer

    config = {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "enable.idempotence": False,  # the embedded broker refuses InitProducerId
        "linger.ms": 20,
        "batch.size": 1 << 20,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1 << 20,
        "message.max.bytes": 8 << 20,
        "compression.type": "none",
        "log_level": 3,
    }
    config.update(extra)
    return Producer(config)


class Delivery:
    def __init__(self) -> None:
        self.failed = 0
        self.acked = 0
        self.error = ""

    def __call__(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1
            self.error = str(err)
        else:
            self.acked += 1


def produce(prod: Any, delivery: Delivery, topic: str, partition: int, key: bytes | None,
            value: bytes, timestamp_ms: int) -> None:
    while True:
        try:
            prod.produce(topic, value, key, partition=partition, timestamp=timestamp_ms,
                         on_delivery=delivery)
            break
        except BufferError:
            prod.poll(0.01)
    prod.poll(0)


def publish(bootstrap: str, topic: str, records: Iterable[Record], partitions: int,
            retime: Callable[[int], int] | None = None) -> list[int]:
    """Send ``records`` in order, each to its key's partition; wait for every ack.

    Returns the count per partition (the end offsets of a fresh topic).
    """
    router = Router(partitions)
    prod = producer(bootstrap)
    delivery = Delivery()
    counts = [0] * partitions
    for n, (key, value, ts) in enumerate(records):
        part = partition_for(router, key, n)
        counts[part] += 1
        produce(prod, delivery, topic, part, key, value, retime(ts) if retime else ts)
    left = prod.flush(120)
    if left or delivery.failed:
        raise RuntimeError(f"publish to {topic}: {left} unsent, {delivery.failed} failed ({delivery.error})")
    return counts


def shift_event_times(value: bytes, delta_ms: int) -> bytes:
    """``value`` with every event's ``timestamp`` and ``sent_at`` moved by ``delta_ms``.

    Bad records (not JSON, unparseable times) come back unchanged. String times
    come back as UTC ``Z`` text, integers as integers.
    """
    try:
        parsed = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value
    items = parsed if isinstance(parsed, list) else [parsed]
    for item in items:
        if not isinstance(item, dict):
            continue
        for name in ("timestamp", "sent_at"):
            stamp = item.get(name)
            if isinstance(stamp, bool) or stamp is None:
                continue
            try:
                ms = parse_timestamp_ms(stamp)
            except Exception:
                continue
            item[name] = ms + delta_ms if isinstance(stamp, int) else _format_z(ms + delta_ms)
    return orjson.dumps(parsed)


def _format_z(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


_ENVIRONMENTS = (
    {"browser": "Chrome", "browser_version": "126.0", "os": "Windows", "os_version": "11",
     "device": "desktop", "locale": "en-US"},
    {"browser": "Safari", "browser_version": "17.5", "os": "iOS", "os_version": "17.5",
     "device": "mobile", "locale": "de-DE"},
    {"browser": "Firefox", "browser_version": "127.0", "os": "Linux", "os_version": "6.9",
     "device": "desktop", "locale": "fr-FR"},
)


def open_session_records(first: int, count: int, timestamp_ms: int,
                         projects: Sequence[str] = ("shop", "docs", "admin")) -> list[Record]:
    """``count`` users (numbered from ``first``) each opening a session: one ``session``
    event with the environment and request data a browser client sends."""
    out: list[Record] = []
    for i in range(first, first + count):
        user = f"mem-user-{i}@example.com"
        project = projects[i % len(projects)]
        event = {
            "id": f"mem-{i:x}",
            "type": "session",
            "timestamp": timestamp_ms,
            "project": project,
            "user_id": user,
            "user_name": f"Member {i}",
            "data": {
                "@environment": _ENVIRONMENTS[i % len(_ENVIRONMENTS)],
                "@request": {"http_method": "GET", "host": f"{project}.example.com",
                             "path": "/", "user_agent": "Mozilla/5.0"},
            },
        }
        out.append(Record(user.encode(), orjson.dumps(event), timestamp_ms))
    return out
