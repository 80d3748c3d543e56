"""The worker's hot path in one process: µs of CPU per event, and where they go.

Runs :class:`~pipeline.worker.processor.PartitionProcessor` over the benchmark
workload (:mod:`bench.workload`) with a real Redis (:class:`EmbeddedRedis`, AOF
on) and a sink that only counts, in batches of ``--batch`` records per partition,
the partitions' batches side by side as the worker runs them. No broker, no
faust: what is left is parsing, routing, the core and the store commit, the part
the worker's own code decides.

    .venv/bin/python -m bench.hotpath                 # events/s, CPU µs per event, Redis CPU
    .venv/bin/python -m bench.hotpath --profile 30    # plus cProfile's top 30 functions
    .venv/bin/python -m bench.hotpath --instructions --events 30000   # instructions per event

It is a tool to look with, not a measure of the worker: ``make bench`` is that.

``--instructions`` runs the same under valgrind's callgrind, counting the
instructions this process executes while the processors run (the workload's
building, Redis's start and the imports are left out: instrumentation is switched on
and off around the window with ``callgrind_control``). A count does not move with
the host's speed or load the way CPU seconds do, so two versions of the hot path
compare in one run each, whatever else the machine is doing. It is about fifty times
slower: a few tens of thousands of events are enough.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench import workload
from pipeline.config import Settings
from pipeline.core.rules import SessionRules
from pipeline.devtools.services import EmbeddedRedis
from pipeline.store.connection import redis_client
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
        # under callgrind everything in this process is about fifty times slower
        slow = {"redis_connect_timeout": 600, "redis_socket_timeout": 600} if args.callgrind_window else {}
        store = RedisStore(redis_client(Settings(redis_url=redis.url, **slow)), "hot")
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
        if args.callgrind_window:
            instrument(True)
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
        if args.callgrind_window:
            instrument(False)
        info = await store.client.info("cpu")
        stats = await store.client.info("commandstats")
        memory = await store.client.info("memory")
        net = await store.client.info("stats")
        await store.close()
    events = work.events_total
    result = {
        "events": events, "wall_s": wall, "events_per_s": events / wall,
        "cpu_us_per_event": cpu / events * 1e6,
        "redis_cpu_us_per_event": (info["used_cpu_user"] + info["used_cpu_sys"]) / events * 1e6,
        "redis_used_memory": memory["used_memory"], "sent": sink.sent,
        "redis_input_bytes_per_event": net["total_net_input_bytes"] / events,
        "commandstats": {k[8:]: (v["calls"], v["usec"]) for k, v in stats.items()},
    }
    print(f"{events:,} events in {wall:.2f} s: {events / wall:,.0f} events/s, "
          f"worker CPU {result['cpu_us_per_event']:.1f} µs/event, "
          f"Redis CPU {result['redis_cpu_us_per_event']:.1f} µs/event (whole run), "
          f"{result['redis_input_bytes_per_event']:,.0f} bytes/event to Redis, "
          f"{sink.sent:,} messages out")
    top = sorted(result["commandstats"].items(), key=lambda kv: -kv[1][1])[:8]
    print("Redis commands: " + ", ".join(f"{name} {calls:,}x {usec / 1e6:.2f} s" for name, (calls, usec) in top))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    return result


def instrument(on: bool) -> None:
    """Switch callgrind's instrumentation of this process on or off.

    ``callgrind_control`` reaches the process through valgrind's gdbserver, which
    this process answers only while it runs guest code: a blocking wait would
    deadlock, so it keeps busy with a little Python until the command has gone
    through (a few thousand instructions counted, the same in every run)."""
    switch = f"--instr={'on' if on else 'off'}"
    command = subprocess.Popen(
        ["callgrind_control", switch, str(os.getpid())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    while command.poll() is None:
        sum(range(1000))
    if command.returncode:
        raise SystemExit(f"callgrind_control {switch} failed")


def count_instructions(argv: list[str], events: int) -> int:
    """Run this module under callgrind with ``argv`` and print the instructions
    counted in the processing window, in all and per event."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("--instructions needs valgrind (Debian's package valgrind)")
    with tempfile.TemporaryDirectory(prefix="hotpath-callgrind-") as tmp:
        out = os.path.join(tmp, "callgrind.out")
        run = subprocess.run(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             sys.executable, "-m", "bench.hotpath", *argv, "--callgrind-window"],
            stderr=subprocess.PIPE, text=True,
        )
        if run.returncode:
            sys.stderr.write(run.stderr[-4000:])
            raise SystemExit(f"the run under callgrind failed (exit {run.returncode})")
        with open(out) as f:
            found = re.search(r"^totals: (\d+)", f.read(), re.MULTILINE)
    if found is None:
        raise SystemExit(f"no instruction total in {out}")
    total = int(found.group(1))
    print(f"instructions in the processing window: {total:,} ({total / events:,.0f} per event)")
    return total


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
    parser.add_argument("--instructions", action="store_true",
                        help="count the instructions of the processing window under valgrind's "
                             "callgrind (about 50 times slower; use a small --events)")
    parser.add_argument("--callgrind-window", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.instructions:
        if args.profile:
            parser.error("--instructions and --profile do not go together")
        rest = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--instructions"]
        # built (and cached) here, outside valgrind: the run under it loads the cache
        count_instructions(rest, workload.build(args.users, args.events).events_total)
        return 0
    asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
