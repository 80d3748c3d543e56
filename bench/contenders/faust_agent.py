"""(c) A bare faust agent: ``async for`` over its stream, orjson per record, nothing else.

What faust's own stream machinery costs per record, without any sessionizing.
"""

from __future__ import annotations

import argparse
from typing import Any

import faust
import orjson

from bench.contenders import report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()

    app = faust.App(
        args.group,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        web_enabled=False,
        autodiscover=False,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        topic_disable_leader=True,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw",
                      partitions=args.partitions)
    total, loads, decode_error = args.records, orjson.loads, orjson.JSONDecodeError
    state = {"records": 0, "events": 0, "ready": False}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def _assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if assigned and not state["ready"]:
            state["ready"] = True
            report("READY")

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for value in stream:
            state["records"] += 1
            try:
                parsed = loads(value)
            except decode_error:
                parsed = None
            state["events"] += len(parsed) if isinstance(parsed, list) and parsed else 1
            if state["records"] == total:
                report("DONE", state["records"], state["events"])

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
