"""(a) The ceiling: a raw aiokafka consumer decoding every record with orjson.

No consumer group: it assigns itself every partition and reads from the beginning.
"""

from __future__ import annotations

import argparse
import asyncio

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.contenders import report


async def run(bootstrap: str, topic: str, partitions: int, records: int) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20, fetch_max_wait_ms=100,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        report("READY")
        seen = events = 0
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        while seen < records:
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for batch in batches.values():
                for message in batch:
                    seen += 1
                    try:
                        value = loads(message.value)
                    except decode_error:
                        events += 1
                        continue
                    events += len(value) if isinstance(value, list) and value else 1
        report("DONE", seen, events)
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--group", default="")  # unused: no group
    args = parser.parse_args()
    asyncio.run(run(args.bootstrap, args.topic, args.partitions, args.records))


if __name__ == "__main__":
    main()
