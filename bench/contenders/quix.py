"""(b) Quix Streams: ``session_window`` (30 s gap) with a count aggregate, ``final()``.

One process, changelog topics off, state in RocksDB in a scratch directory. Each
record is decoded with orjson and expanded into its events (a batch record into
its elements); records without a key (the window needs one) and records that are
not JSON are dropped; closed windows go to an output topic.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from datetime import timedelta
from typing import Any

import orjson
from quixstreams import Application

from bench.contenders import report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--gap-s", type=float, default=30.0)
    args = parser.parse_args()

    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        use_changelog_topics=False,
        auto_create_topics=False,
        state_dir=tempfile.mkdtemp(prefix="bench-quix-state-"),
        loglevel="WARNING",
        # the embedded broker answers a group join after half the session timeout
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
        producer_extra_config={"enable.idempotence": False},
    )
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    source = app.topic(args.topic, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(args.output, key_serializer="bytes", value_serializer="json")
    total, loads, decode_error = args.records, orjson.loads, orjson.JSONDecodeError
    counts = {"records": 0, "events": 0}

    def expand(value: bytes, key: Any, _timestamp: int, _headers: Any) -> list[Any]:
        n = counts["records"] = counts["records"] + 1
        if n == 1:
            report("READY")
        try:
            parsed = loads(value)
        except decode_error:
            parsed = None
        events = parsed if isinstance(parsed, list) and parsed else [parsed]
        counts["events"] += len(events)
        if n == total:
            report("DONE", n, counts["events"])
            app.stop()
        if key is None or parsed is None:
            return []
        return events

    sdf = app.dataframe(source)
    sdf = sdf.apply(expand, expand=True, metadata=True)
    sdf = sdf.session_window(timedelta(seconds=args.gap_s)).count().final()
    sdf.to_topic(sink)
    app.run()


if __name__ == "__main__":
    main()
