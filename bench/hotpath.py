"""The worker's hot path in one process: µs of CPU per event, and where they go.

Runs :class:`~pipeline.worker.processor.PartitionProcessor` over the benchmark
workload (:mod:`bench.workload`) with a real Redis (:class:`EmbeddedRedis`, AOF
on) and a sink that only counts, in batches of ``--batch`` records per partition,
the partitions' batches side by side as the worker runs them. No broker, no
faust: what is left is parsing, routing, the core and the store commit, the part
the worker's own code decides.

    .venv/bin/python -m bench.hotpath                 # events/s, CPU µs per event, Redis CPU
    .venv/bin/python -m bench.hotpath --profile 30    # plus cProfile's top 30 functions

It is a tool to look with, not a measure of the worker: ``make bench`` is that.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import workload
from pipeline.core.rules import SessionRules
from pipeline.services import EmbeddedRedis
from pipeline.store.redis import RedisStore
from pipeline.worker.outbox import Outgoing
from pipeline.worker.processor import PartitionProcessor, Topics
from pipeline.worker.routing import Router
from pipeline.worker.run import tune_gc


@dataclass(slots=True)
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int
    headers: Sequence[tuple[str, bytes]] = ()


class CountingSink:
    def __init__(self) -> None:
        self.sent = 0

    async def send(self, messages: Sequence[Outgoing]) -> None:
        self.sent += len(messages)


def partitioned(records: Sequence[workload.Record], partitions: int, topic: str) -> dict[int, list[Rec]]:
    router = Router(partitions)
    parts: dict[int, list[Rec]] = defaultdict(list)
    for record in records:
        p = router.partition_of(record.key.decode()) if record.key else 0
        parts[p].append(Rec(topic, p, len(parts[p]), record.key, record.value, record.timestamp_ms))
    return parts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = workload.build(args.users, args.events)
    topics = Topics("events", "events-repartition", "dlq", "sessions")
    parts = partitioned(work.records, args.partitions, topics.events)
    if not args.default_gc:
        tune_gc()  # as the worker does
    rules = SessionRules(inactivity_timeout_ms=args.timeout * 1000)
    with EmbeddedRedis(appendonly=True) as redis:
        store = RedisStore.from_url(redis.url, "hot")
        sink = CountingSink()
        router = Router(args.partitions)
        processors = {}
        for p in range(args.partitions):
            processors[p] = PartitionProcessor(
                await store.claim(p), rules=rules, store=store, sink=sink, topics=topics,
                router=router, overlap_sends=True,
            )
            await processors[p].warm()  # as the worker does after a claim
        await store.client.config_resetstat()
        profile = cProfile.Profile() if args.profile else None
        wall0, cpu0 = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        longest = max(len(rs) for rs in parts.values())
        for start in range(0, longest, args.batch):
            await asyncio.gather(*(
                processors[p].process(rs[start:start + args.batch])
                for p, rs in parts.items() if start < len(rs)
            ))
        for processor in processors.values():
            await processor.tick(caught_up=False)
        if profile is not None:
            profile.disable()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        info = await store.client.info("cpu")
        stats = await store.client.info("commandstats")
        memory = await store.client.info("memory")
        await store.close()
    events = work.events_total
    result = {
        "events": events, "wall_s": wall, "events_per_s": events / wall,
        "cpu_us_per_event": cpu / events * 1e6,
        "redis_cpu_us_per_event": (info["used_cpu_user"] + info["used_cpu_sys"]) / events * 1e6,
        "redis_used_memory": memory["used_memory"], "sent": sink.sent,
        "commandstats": {k[8:]: (v["calls"], v["usec"]) for k, v in stats.items()},
    }
    print(f"{events:,} events in {wall:.2f} s: {events / wall:,.0f} events/s, "
          f"worker CPU {result['cpu_us_per_event']:.1f} µs/event, "
          f"Redis CPU {result['redis_cpu_us_per_event']:.1f} µs/event (whole run), "
          f"{sink.sent:,} messages out")
    top = sorted(result["commandstats"].items(), key=lambda kv: -kv[1][1])[:8]
    print("Redis commands: " + ", ".join(f"{name} {calls:,}x {usec / 1e6:.2f} s" for name, (calls, usec) in top))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1000, help="records per partition per batch")
    parser.add_argument("--timeout", type=int, default=120, help="inactivity timeout, seconds")
    parser.add_argument("--default-gc", action="store_true",
                        help="leave the garbage collector at Python's defaults (the worker tunes it)")
    parser.add_argument("--profile", type=int, nargs="?", const=30, default=0, metavar="N",
                        help="print cProfile's top N functions by self time")
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
