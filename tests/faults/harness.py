"""The fault-injection harness: a real broker, a real redis-server, real worker processes,
a seeded load published live, seeded faults, a drain, and the offline checker.

One :class:`Scenario` describes a run (load size, faults, worker settings);
:func:`run_scenario` executes it and returns a :class:`RunResult` whose
``report`` is the :class:`pipeline.devtools.checker.CheckReport` and whose ``table()`` is the
summary printed by the tests.

Timeline of a run::

    start broker + redis-server (AOF everysec) + 1 worker
    generate the load (TrafficModel.preload(events, drain=True) + poison records),
        event times and record timestamps on the wall clock, from a few seconds ahead
    publish it paced by its record timestamps (speed 1: the producer is live)
    meanwhile inject the faults at seeded times, one after another
    wait for the drain: every open session closed (inactivity timeout after the last
        record), every outbox empty, consumer lag 0
    stop the workers, run the checker

The broker is Tansu with memory storage: it is only ever paused, never killed
(a killed broker forgets every topic). Redis is killed (SIGKILL) and restarted on
the same port from its append-only file; for lost writes, from a copy of that file
taken a few seconds earlier. Worker processes are this module's own (the files of a
run: ``run.log``, ``worker-N.log``, the Redis data and ``table.txt``, under ``root``).
"""

from __future__ import annotations

import bisect
import os
import random
import re
import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from pipeline.config import Settings
from pipeline.devtools.apache_kafka import EmbeddedKafka
from pipeline.devtools.checker import CheckReport, check_pipeline, consumer_lag, redis_leftovers
from pipeline.devtools.process import SessionizerProcess
from pipeline.devtools.services import EmbeddedBroker, EmbeddedRedis, create_topics
from pipeline.devtools.services_cluster import EmbeddedRedisCluster
from pipeline.devtools.traffic import TrafficModel
from pipeline.worker.routing import Router

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"assigned partitions \[([0-9, ]*)\]")

#: Worker settings of every fault run (the environment of each worker process).
WORKER_SETTINGS: dict[str, Any] = {
    "topic_partitions": 8,
    "kafka_session_timeout": 6.0,
    "inactivity_timeout": 10.0,
    # longer than the broker pause: a session closed by the stream clock while its events
    # were held up can still take them (see docs/reliability.md)
    "reopen_grace": 30.0,
    "max_events_per_session": 1_000_000,  # every event listed: the checker counts by id
    "web_port": 0,
    "log_level": "info",
}

#: The traffic model, scaled to a 10 s inactivity timeout: think times under 6 s,
#: a heartbeat every 5 s, sessions of about half a minute, abandoned users away 15 s+.
TRAFFIC: dict[str, Any] = {
    "bad_ratio": 0.01,
    "duplicate_ratio": 0.05,
    "out_of_order_ratio": 0.03,
    "think_median_s": 2.0,
    "think_max_s": 6.0,
    "heartbeat_interval_ms": 5_000,
    "session_median_s": 25.0,
    "session_max_s": 60.0,
    "offline_mean_s": 20.0,
    "offline_min_after_abandon_s": 15.0,
    "ramp_s": 15.0,
}

@dataclass
class Scenario:
    name: str
    users: int
    events: int
    seed: int
    kills: int = 1
    zombie: bool = True
    scale: bool = True  # 1 -> 2 -> 3 -> 1 workers
    redis_kill: bool = True
    redis_rollback: bool = True  # Redis loses its last seconds of writes (a machine crash)
    broker_pause_s: float = 20.0  # 0: no broker pause
    #: a Redis Cluster (3 masters, 3 replicas) instead of one redis-server
    redis_cluster: bool = False
    #: on the cluster: SIGKILL the master of a busy partition while its replica lags
    #: (replication is asynchronous): the replica takes over without the last writes
    master_kill: bool = False
    zombie_s: float = 16.0  # past the Kafka session timeout and the inactivity timeout
    poison: int = 40  # hand-made poison records on top of the model's bad ones
    drain_timeout_s: float = 150.0
    settings: dict[str, Any] = field(default_factory=dict)
    broker: str = "tansu"  # or "kafka": Apache Kafka, with the sink's idempotent producer on
    #: the topics are created beforehand (as an operator would) with this many partitions,
    #: while the workers' SESSIONIZER_TOPIC_PARTITIONS says otherwise; None: as it says
    created_partitions: int | None = None


@dataclass
class Fault:
    at_s: float  # planned start, seconds after the load starts
    kind: str
    hold_s: float = 0.0  # pause / stop / down time
    started_s: float = 0.0  # actual, seconds after the load starts
    ended_s: float = 0.0
    detail: str = ""


# -- processes ---------------------------------------------------------------------------


class Worker(SessionizerProcess):
    """One ``sessionizer worker`` process (:mod:`pipeline.devtools.process`)."""

    def __init__(self, number: int, env: dict[str, str], log_path: Path) -> None:
        super().__init__("worker", env=env, log_path=log_path, grace_s=20.0)
        self.number = number
        self.expected_exit = False  # killed or stopped on purpose

    def assigned(self) -> list[int] | None:
        """The partitions of its latest ``assigned partitions`` log line (None: none)."""
        found = READY.findall(self.log_text())
        if not found:
            return None
        return [int(p) for p in found[-1].split(",") if p.strip()]

    def wait_assigned(self, timeout_s: float) -> bool:
        """Its ``/healthz`` answers with partitions within ``timeout_s``."""
        return self.ready_within(timeout_s)

    def kill(self) -> int | None:
        self.expected_exit = True
        return super().kill()

    def stop(self, grace_s: float | None = None) -> int | None:
        self.expected_exit = True
        return super().stop(grace_s)

    def __repr__(self) -> str:
        return f"worker-{self.number}(pid {self.pid})"


class Cluster:
    """Broker, redis-server and the worker processes of one run."""

    def __init__(self, root: Path, values: dict[str, Any], broker: str = "tansu",
                 created_partitions: int | None = None, redis_cluster: bool = False) -> None:
        self.root = root
        self.values = values
        self.partitions = created_partitions or int(values["topic_partitions"])
        self.broker: EmbeddedBroker | EmbeddedKafka = (
            EmbeddedKafka(workdir=root / "broker") if broker == "kafka" else EmbeddedBroker(workdir=root / "broker"))
        # AOF on, appendfsync everysec; no automatic AOF rewrite, so that a copy of the
        # AOF directory taken while it runs is a consistent prefix (redis_rollback)
        self.redis: Any = (
            EmbeddedRedisCluster(workdir=root / "redis") if redis_cluster
            else EmbeddedRedis(workdir=root / "redis", extra_args=["--auto-aof-rewrite-percentage", "0"]))
        self.workers: list[Worker] = []  # running (or paused) ones
        self.all_workers: list[Worker] = []
        self.settings: Settings | None = None
        self.env: dict[str, str] = {}
        self.lock = threading.RLock()

    def start(self) -> Settings:
        self.broker.start()
        self.redis.start()
        values = dict(self.values)
        values["kafka_bootstrap"] = self.broker.bootstrap
        values["redis_url"] = self.redis.url
        self.settings = settings = Settings(**values)
        names = (settings.events_topic, settings.repartition_topic, settings.sessions_topic,
                 settings.dlq_topic, settings.updates_topic)
        create_topics(settings.kafka_bootstrap, dict.fromkeys(names, self.partitions))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
        env.update({f"SESSIONIZER_{k.upper()}": str(v) for k, v in values.items()})
        env["PYTHONUNBUFFERED"] = "1"
        self.env = env
        return settings

    def add_worker(self, wait_s: float = 0.0) -> Worker:
        with self.lock:
            number = len(self.all_workers) + 1
            worker = Worker(number, self.env, self.root / f"worker-{number}.log").spawn()
            self.workers.append(worker)
            self.all_workers.append(worker)
        if wait_s:
            worker.wait_assigned(wait_s)
        return worker

    def remove(self, worker: Worker) -> None:
        with self.lock:
            if worker in self.workers:
                self.workers.remove(worker)

    def close(self) -> None:
        for worker in self.all_workers:
            worker.stop(10)
        self.broker.close()
        self.redis.close()

    def unexpected_exits(self) -> list[str]:
        return [f"{w} exited with {w.proc.returncode if w.proc else None}"
                for w in self.all_workers if not w.expected_exit and not w.running]


# -- the load ----------------------------------------------------------------------------


def poison_records(rng: random.Random, count: int, now_ms: int) -> list[tuple[bytes | None, bytes | None]]:
    """Records no worker may choke on: every one is dead-lettered, none stalls a partition."""
    def event(**fields: Any) -> dict[str, Any]:
        base = {"type": "usage", "timestamp": now_ms, "user_id": f"poison-{rng.randrange(10**6)}"}
        base.update(fields)
        return {k: v for k, v in base.items() if v is not None}

    makers: list[Callable[[], tuple[bytes | None, bytes | None]]] = [
        lambda: (b"tombstone", None),                                  # no value at all
        lambda: (b"k", b""),                                           # empty value
        lambda: (None, b"[]"),                                         # empty batch
        lambda: (None, b"[1, \"two\", null]"),                         # batch of non-events
        lambda: (None, b"[" * 5000 + b"]" * 5000),                     # nested past the parser's depth
        lambda: (None, bytes(rng.randrange(256) for _ in range(64))),  # binary noise
        lambda: (b"\xff\xfe", b"{\"type\": \"usage\""),              # truncated, bad key
        lambda: (None, orjson.dumps(event(user_id=None))),             # no identity
        lambda: (None, orjson.dumps(event(session_id="bad id!"))),     # schema: session id form
        lambda: (None, orjson.dumps(event(timestamp="not a time"))),   # timestamp
        lambda: (None, orjson.dumps(event(timestamp=now_ms - 10 * 86_400_000))),  # too old
        lambda: (None, orjson.dumps(event(data={"blob": "x" * 200_000}))),  # oversize
        lambda: (None, orjson.dumps([event(user_id=None), event(type=""), 7])),  # batch, all bad
        lambda: (None, orjson.dumps(event(type="sessionend"))),        # ends no session
    ]
    return [rng.choice(makers)() for _ in range(count)]


@dataclass
class Load:
    records: list[tuple[bytes | None, bytes | None, int, int]]  # key, value, timestamp, partition
    start_ms: int
    end_ms: int
    users: int
    model_events: int


def build_load(scenario: Scenario, partitions: int, start_ms: int) -> Load:
    model = TrafficModel(scenario.users, scenario.seed, start_ms, **TRAFFIC)
    preload = model.preload(scenario.events, drain=True)
    router = Router(partitions)
    rng = random.Random(scenario.seed * 7919 + 1)
    records: list[tuple[bytes | None, bytes | None, int, int]] = []
    for key, value, ts in preload.records:
        partition = router.partition_of(key.decode()) if key is not None else rng.randrange(partitions)
        records.append((key, value, ts, partition))
    end_ms = records[-1][2]
    for key, value in poison_records(rng, scenario.poison, start_ms):
        ts = rng.randrange(start_ms, end_ms)
        partition = rng.randrange(partitions)
        records.insert(bisect.bisect_right(records, ts, key=lambda r: r[2]), (key, value, ts, partition))
    return Load(records, start_ms, end_ms, scenario.users, preload.stats.events_sent)


class Publisher(threading.Thread):
    """Sends the load paced by its record timestamps (a live producer at speed 1)."""

    def __init__(self, bootstrap: str, topic: str, load: Load) -> None:
        super().__init__(name="publisher", daemon=True)
        self.bootstrap, self.topic, self.load = bootstrap, topic, load
        self.sent = 0
        self.acked = 0
        self.errors: list[str] = []
        self.finished_at: float | None = None  # wall time when every record was acknowledged

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # reported by the run
            self.errors.append(repr(exc))
            self.finished_at = time.time()

    def _run(self) -> None:
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False,
            max_in_flight_requests_per_connection=1, linger_ms=5, retries=2**31 - 1,
            request_timeout_ms=60_000, delivery_timeout_ms=300_000, max_block_ms=300_000,
            max_request_size=4 << 20,
        )

        def ok(_meta: Any) -> None:
            self.acked += 1

        def failed(exc: BaseException) -> None:
            self.errors.append(repr(exc))

        try:
            for key, value, ts, partition in self.load.records:
                delay = ts / 1000 - time.time()
                if delay > 0.002:
                    time.sleep(delay)
                future = producer.send(self.topic, key=key, value=value, timestamp_ms=ts, partition=partition)
                future.add_callback(ok)
                future.add_errback(failed)
                self.sent += 1
            producer.flush(timeout=300)
        except Exception as exc:  # reported by the run
            self.errors.append(repr(exc))
        finally:
            producer.close(timeout=10)
            self.finished_at = time.time()


class SessionWatch(threading.Thread):
    """Reads the sessions topic as it is written: when each (session_id, revision) was
    first seen, in wall time (for how late sessions closed)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(name="session-watch", daemon=True)
        self.bootstrap, self.topic = bootstrap, topic
        self.seen: dict[tuple[str, int], float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                 auto_offset_reset="earliest", fetch_max_wait_ms=50)
        try:
            parts = consumer.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            while not self.stopping.is_set():
                try:
                    batches = consumer.poll(timeout_ms=200)
                except Exception:  # the broker paused: ask again
                    time.sleep(0.5)
                    continue
                now = time.time()
                for batch in batches.values():
                    for r in batch:
                        rec = orjson.loads(r.value)
                        self.seen.setdefault((rec["session_id"], rec["revision"]), now)
        finally:
            consumer.close()


@dataclass
class Lateness:
    """How long after its deadline each session closed for inactivity was on the sessions
    topic (seconds), split by whether the deadline fell near a fault."""

    quiet: list[float] = field(default_factory=list)
    near_fault: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # late ones away from faults

    @staticmethod
    def _summary(values: list[float]) -> str:
        if not values:
            return "none"
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return f"{len(values):,}: median {ordered[len(ordered) // 2]:.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s"

    def text(self) -> str:
        return f"away from faults {self._summary(self.quiet)}; near faults {self._summary(self.near_fault)}"


def amended_near(report: CheckReport, seen: dict[tuple[str, int], float], faults: list[Fault],
                 t0: float, margin_s: float = 15.0) -> Counter[str]:
    """The sessions that differ from the offline core in revision number only, by the
    fault whose window (start .. end + ``margin_s``) held their first revision's close."""
    found: Counter[str] = Counter()
    for sid in report.revision_only_ids:
        first = seen.get((sid, 1))
        near = [f.kind for f in faults
                if first is not None and t0 + f.started_s <= first <= t0 + f.ended_s + margin_s]
        found[near[-1] if near else "no fault"] += 1
    return found


def lateness(report: CheckReport, seen: dict[tuple[str, int], float], faults: list[Fault], t0: float,
             before_s: float = 5.0, after_s: float = 15.0) -> Lateness:
    """Sessions the live pipeline closed for inactivity: first seen on the sessions topic
    minus their deadline (their events' latest arrival + the inactivity timeout). Near a
    fault: the deadline from ``before_s`` before a fault's start (a close committed then
    may still be on its way to the broker) to ``after_s`` after its end."""
    out = Lateness()
    exp, live = report.expected, report.live
    if exp is None or live is None:
        return out
    windows = [(t0 + f.started_s - before_s, t0 + f.ended_s + after_s) for f in faults]
    for sid, rec in live.final.items():
        if rec.get("close_reason") != "timeout" or sid not in exp.session_arrival_ms:
            continue
        first = seen.get((sid, rec["revision"]))
        if first is None:
            continue
        due = (exp.session_arrival_ms[sid] + exp.session_timeout_ms[sid] + 1) / 1000
        late = first - due
        if any(lo <= due <= hi for lo, hi in windows):
            out.near_fault.append(late)
        else:
            out.quiet.append(late)
            if late > 2.0:
                out.notes.append(f"session {sid} due at {due - t0:.1f} s closed {late:.1f} s late")
    return out


# -- faults ------------------------------------------------------------------------------


def plan_faults(scenario: Scenario, window_s: tuple[float, float], rng: random.Random) -> list[Fault]:
    """The faults of ``scenario`` in a seeded order at seeded times within ``window_s``.

    Scaling keeps its order (up, up, down); the zombie comes while two or more workers
    run (after the first scale-up, before the scale-down).
    """
    seq: list[str] = ["scale_up", "scale_up", "scale_down"] if scenario.scale else []
    if scenario.zombie:
        lo = 1 if scenario.scale else 0
        hi = len(seq) - 1 if scenario.scale else len(seq)
        seq.insert(rng.randint(lo, hi), "zombie")
    others = ["kill"] * scenario.kills
    if scenario.redis_kill:
        others.append("redis_kill")
    if scenario.redis_rollback:
        others.append("redis_rollback")
    if scenario.broker_pause_s:
        others.append("broker_pause")
    if scenario.master_kill:
        others.append("master_kill")
    for kind in others:
        seq.insert(rng.randint(0, len(seq)), kind)
    holds = {"kill": lambda: rng.uniform(1.0, 4.0), "zombie": lambda: scenario.zombie_s,
             "scale_up": lambda: 0.0, "scale_down": lambda: 0.0,
             "redis_kill": lambda: rng.uniform(1.0, 3.0), "redis_rollback": lambda: rng.uniform(2.0, 4.0),
             "broker_pause": lambda: scenario.broker_pause_s,
             "master_kill": lambda: rng.uniform(1.5, 3.0)}
    busy = {"kill": 1.0, "zombie": 3.0, "scale_up": 9.0, "scale_down": 4.0, "redis_kill": 2.0,
            "redis_rollback": 3.0, "broker_pause": 2.0, "master_kill": 10.0}
    faults = [Fault(0.0, kind, holds[kind]()) for kind in seq]
    need = sum(f.hold_s + busy[f.kind] for f in faults)
    start, end = window_s
    free = max(0.0, end - start - need)
    cuts = sorted(rng.uniform(0, free) for _ in faults)
    at = start
    previous = 0.0
    for fault, cut in zip(faults, cuts, strict=True):
        at += cut - previous
        previous = cut
        fault.at_s = round(at, 1)
        at += fault.hold_s + busy[fault.kind]
    return faults


class Injector(threading.Thread):
    """Runs the planned faults one after another against the cluster."""

    def __init__(self, cluster: Cluster, faults: list[Fault], t0: float, rng: random.Random,
                 say: Callable[[str], None]) -> None:
        super().__init__(name="injector", daemon=True)
        self.cluster, self.faults, self.t0, self.rng, self.say = cluster, faults, t0, rng, say
        self.errors: list[str] = []

    def now_s(self) -> float:
        return time.time() - self.t0

    def run(self) -> None:
        for fault in self.faults:
            delay = fault.at_s - self.now_s()
            if delay > 0:
                time.sleep(delay)
            fault.started_s = self.now_s()
            try:
                fault.detail = getattr(self, f"_{fault.kind}")(fault)
            except Exception as exc:
                self.errors.append(f"{fault.kind} at {fault.started_s:.1f}s: {exc!r}")
                fault.detail = f"failed: {exc!r}"
            fault.ended_s = self.now_s()
            self.say(f"[{fault.started_s:6.1f}s -> {fault.ended_s:6.1f}s] {fault.kind}: {fault.detail}")

    def _victim(self, wait_s: float = 30.0) -> Worker:
        """A worker holding partitions; waits up to ``wait_s`` for one (a worker just
        restarted takes a few seconds), then takes any."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.cluster.lock:
                workers = list(self.cluster.workers)
            busy = [w for w in workers if w.assigned()]
            if busy or time.monotonic() > deadline:
                return self.rng.choice(busy or workers)
            time.sleep(0.2)

    def _kill(self, fault: Fault) -> str:
        victim = self._victim()
        assigned = victim.assigned()
        victim.kill()
        self.cluster.remove(victim)
        time.sleep(fault.hold_s)
        fresh = self.cluster.add_worker()
        return f"kill -9 {victim} (partitions {assigned}); {fresh} started {fault.hold_s:.1f}s later"

    def _zombie(self, fault: Fault) -> str:
        victim = self._victim()
        assigned = victim.assigned()
        victim.signal(signal.SIGSTOP)
        time.sleep(fault.hold_s)
        victim.signal(signal.SIGCONT)
        return f"SIGSTOP {victim} (partitions {assigned}) for {fault.hold_s:.0f}s, then SIGCONT"

    def _scale_up(self, fault: Fault) -> str:
        worker = self.cluster.add_worker(wait_s=30.0)
        return f"{worker} added: {len(self.cluster.workers)} workers, it holds {worker.assigned()}"

    def _scale_down(self, fault: Fault) -> str:
        with self.cluster.lock:
            victims = self.cluster.workers[:-1]
        for victim in victims:
            victim.stop()
            self.cluster.remove(victim)
        return f"stopped {victims} (SIGTERM): {len(self.cluster.workers)} worker left"

    def _redis_kill(self, fault: Fault) -> str:
        redis = self.cluster.redis
        pid = redis.pid
        redis.kill()
        time.sleep(fault.hold_s)
        redis.restart()
        return f"kill -9 redis-server (pid {pid}); restarted from its AOF {fault.hold_s:.1f}s later"

    def _redis_rollback(self, fault: Fault) -> str:
        """What a machine crash does to Redis with ``appendfsync everysec``: the writes of
        its last moments are gone. (A killed redis-server loses nothing: it writes the AOF
        before it answers; only the fsync is once a second.) Copy the AOF, let the workers
        go on committing and sending for ``hold_s``, kill redis-server, put the old AOF
        back and restart it: Redis is back as it was ``hold_s`` earlier."""
        redis = self.cluster.redis
        # Redis 7 keeps its AOF in a directory of parts, Redis 6 in one file
        aof = redis.data_dir / "appendonlydir"
        if not aof.exists():
            aof = redis.data_dir / "appendonly.aof"
        saved = redis.data_dir.parent / "aof-saved"
        _remove(saved)
        _copy(aof, saved)
        copied = self._tokens()  # at least as recent as the copy
        started = time.monotonic()
        time.sleep(fault.hold_s)
        while time.monotonic() - started < 30:  # until some commit is there to be lost
            now = self._tokens()
            lost = sorted(p for p, token in now.items() if copied.get(p) != token)
            if lost:
                break
            time.sleep(0.2)
        redis.kill()
        _remove(aof)
        _copy(saved, aof)
        redis.restart()
        return (f"AOF copied, {time.monotonic() - started:.1f}s later kill -9 redis-server and restart it "
                f"from the copy: the commits of those seconds lost (partitions {lost})")

    def _master_kill(self, fault: Fault) -> str:
        """A Redis Cluster master dies while its replica is behind: the replica is stopped
        (SIGSTOP) and its replication link cut (CLIENT KILL TYPE replica) for ``hold_s``
        while the workers go on committing to the master, then the master gets SIGKILL and
        the replica SIGCONT. Past cluster-node-timeout the replica
        is elected master, without the commits of those seconds; the killed node comes
        back and rejoins as a replica."""
        cluster = self.cluster.redis
        settings = self.cluster.settings
        assert settings is not None
        from pipeline.store.keys import Keys

        keys = Keys(settings.redis_key_prefix)
        master = cluster.master_of(keys.meta(0))
        with master.client() as client:
            replicas = [line for line in client.info("replication").values() if isinstance(line, dict)]
        replica = cluster.node_by_port(int(replicas[0]["port"]))
        held = [p for p in range(settings.topic_partitions) if cluster.master_of(keys.meta(p)) is master]
        before = self._tokens()
        replica.pause()
        with master.client() as client:  # what the master writes from now on stays there
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        started = time.monotonic()
        time.sleep(fault.hold_s)
        while time.monotonic() - started < 30:  # until some commit is there to be lost
            if any(self._tokens().get(p) != before.get(p) for p in held):
                break
            time.sleep(0.2)
        pid = master.pid
        master.kill()
        replica.resume()
        promoted = cluster.wait_promoted(replica, timeout=60)
        master.start()  # rejoins as a replica of the node that took over
        cluster.wait_ok(timeout=60)
        return (f"replica :{replica.port} paused {time.monotonic() - started:.1f}s, kill -9 master "
                f":{master.port} (pid {pid}, partitions {held}); replica promoted: {promoted}")

    def _tokens(self) -> dict[int, bytes | None]:
        """Every partition's commit token in Redis."""
        from pipeline.store.keys import Keys

        settings = self.cluster.settings
        assert settings is not None
        keys = Keys(settings.redis_key_prefix)
        client = self.cluster.redis.client()
        try:
            return {p: client.hget(keys.meta(p), "token") for p in range(self.cluster.partitions)}
        except Exception:  # a cluster in the middle of a failover: nothing to compare
            return {}
        finally:
            client.close()

    def _broker_pause(self, fault: Fault) -> str:
        broker = self.cluster.broker
        broker.pause()
        time.sleep(fault.hold_s)
        broker.resume()
        return f"SIGSTOP broker for {fault.hold_s:.0f}s, then SIGCONT"


# -- the run -----------------------------------------------------------------------------


@dataclass
class RunResult:
    scenario: Scenario
    report: CheckReport
    faults: list[Fault]
    published: int
    load_s: float
    lag_zero_after_fault_s: float | None
    lag_zero_after_publish_s: float | None
    drained_s: float | None
    log_counts: Counter[str]
    problems: list[str]
    root: Path
    late: Lateness = field(default_factory=Lateness)
    amended: Counter[str] = field(default_factory=Counter)
    cluster: Cluster | None = None

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.problems

    def fault_summary(self) -> str:
        kinds = Counter(f.kind for f in self.faults)
        parts = []
        if kinds["kill"]:
            parts.append(f"kill -9 worker x{kinds['kill']}")
        if kinds["zombie"]:
            parts.append(f"SIGSTOP worker {self.scenario.zombie_s:.0f}s x{kinds['zombie']}")
        if kinds["scale_up"] or kinds["scale_down"]:
            parts.append("scale 1->2->3->1")
        if kinds["redis_kill"]:
            parts.append(f"kill -9 redis x{kinds['redis_kill']}")
        if kinds["redis_rollback"]:
            parts.append(f"redis loses its last seconds x{kinds['redis_rollback']}")
        if kinds["broker_pause"]:
            parts.append(f"SIGSTOP broker {self.scenario.broker_pause_s:.0f}s x{kinds['broker_pause']}")
        return f"{len(self.faults)}: " + ", ".join(parts)

    def table(self) -> str:
        def secs(value: float | None) -> str:
            return "never" if value is None else f"{value:.1f} s"

        counts = self.log_counts
        extra = [
            ("scenario", f"{self.scenario.name} on {self.scenario.broker}: {self.scenario.users:,} users, "
                         f"seed {self.scenario.seed}, "
                         f"{self.published:,} records published over {self.load_s:.0f} s"),
            ("faults injected", self.fault_summary()),
            ("workers saw", f"{counts['fenced']} fenced writes refused, {counts['rebuilt']} partitions "
                            f"rebuilt after Redis lost writes, {counts['resent']} outbox resends, "
                            f"{counts['transient']} transient failures retried"),
            ("drained", f"{secs(self.drained_s)} after the last record was acknowledged; consumer lag 0 "
                        f"{secs(self.lag_zero_after_fault_s)} after the last fault"),
            ("idle closes late by", self.late.text()),
        ]
        if self.amended:
            extra.append(("revision-only, near", ", ".join(f"{kind} {n}" for kind, n in self.amended.most_common())))
        text = self.report.table(extra)
        if self.problems:
            text += "\nrun problems: " + "; ".join(self.problems)
        return text


LOG_PATTERNS = {
    "fenced": re.compile(r"another worker took it over"),
    "rebuilt": re.compile(r"Redis lost writes|rebuilding from the input log"),
    "resent": re.compile(r"resending \d+ outbox messages"),
    "idempotent": re.compile(r"sink: idempotent producer"),
    "transient": re.compile(r"transient failure"),
    "errors": re.compile(r"\bERROR\b|Traceback"),
}


def run_scenario(scenario: Scenario, root: Path, say: Callable[[str], None] = print,
                 keep_on_failure: bool = False) -> RunResult:
    """Run ``scenario`` with its files (logs, Redis data) under ``root``.

    ``keep_on_failure``: when the check fails, leave the broker and redis-server running
    (``result.cluster``) for a post-mortem; the caller closes them.
    """
    root.mkdir(parents=True, exist_ok=True)
    journal = open(root / "run.log", "a")  # noqa: SIM115 -- closed below
    echo = say

    def note(text: str) -> None:
        journal.write(f"{time.strftime('%H:%M:%S')} {text}\n")
        journal.flush()
        echo(text)

    unique = f"{scenario.name}-{scenario.seed}-{os.getpid()}"
    values: dict[str, Any] = dict(WORKER_SETTINGS)
    values.update(
        events_topic=f"events-{unique}", sessions_topic=f"sessions-{unique}", dlq_topic=f"dlq-{unique}",
        updates_topic=f"updates-{unique}", repartition_topic=f"repartition-{unique}",
        consumer_group=f"sessionizer-{unique}", redis_key_prefix=f"sz-{unique}",
    )
    if scenario.broker == "kafka":
        values["kafka_idempotence"] = "on"  # Apache Kafka grants it: the run checks it is used
    values.update(scenario.settings)
    cluster = Cluster(root, values, scenario.broker, scenario.created_partitions,
                      redis_cluster=scenario.redis_cluster)
    problems: list[str] = []
    keep = False
    try:
        settings = cluster.start()
        first = cluster.add_worker()
        lead_s = 5.0 + scenario.events / 40_000  # time to build the load
        start_ms = int((time.time() + lead_s) * 1000)
        load = build_load(scenario, cluster.partitions, start_ms)
        load_s = (load.end_ms - load.start_ms) / 1000
        if not first.wait_assigned(60):
            raise RuntimeError(f"the first worker got no partitions; log:\n{first.log_text()[-3000:]}")
        t0 = load.start_ms / 1000
        rng = random.Random(scenario.seed)
        faults = plan_faults(scenario, (8.0, max(30.0, load_s - 5.0)), rng)
        note(f"{scenario.name}: {len(load.records):,} records ({load.model_events:,} events) over "
            f"{load_s:.0f} s; faults at {[(f.kind, f.at_s) for f in faults]}; files in {root}")
        publisher = Publisher(settings.kafka_bootstrap, settings.events_topic, load)
        injector = Injector(cluster, faults, t0, rng, note)
        watch = SessionWatch(settings.kafka_bootstrap, settings.sessions_topic)
        watch.start()
        publisher.start()
        injector.start()
        publisher.join()
        injector.join()
        problems += injector.errors
        if publisher.errors or publisher.acked != len(load.records):
            problems.append(f"publisher: {publisher.acked} of {len(load.records)} acknowledged; "
                            f"{publisher.errors[:3]}")
        published_at = publisher.finished_at or time.time()
        last_fault = t0 + max((f.ended_s for f in faults), default=0.0)
        note(f"published {publisher.acked:,} records; draining")

        drained_at = lag_zero_at = None
        lag: int | None = None
        left: dict[str, int] = {}
        deadline = time.time() + scenario.drain_timeout_s
        good = 0
        while time.time() < deadline:
            try:
                lag = sum(consumer_lag(settings.kafka_bootstrap, settings.consumer_group,
                                       [settings.events_topic, settings.repartition_topic]).values())
                left = redis_leftovers(settings.redis_url, settings.redis_key_prefix)
            except Exception as exc:  # a service still recovering: ask again
                note(f"drain probe failed: {exc!r}")
                time.sleep(1)
                continue
            now = time.time()
            if lag == 0 and lag_zero_at is None:
                lag_zero_at = now
            if lag != 0:
                lag_zero_at = None
            good = good + 1 if lag == 0 and not any(left.values()) else 0
            if good >= 3:
                drained_at = now
                break
            time.sleep(1.0)
        if drained_at is None:
            problems.append(f"not drained within {scenario.drain_timeout_s:.0f} s after publishing: "
                            f"lag {lag}, Redis {left}")
        problems += cluster.unexpected_exits()
        time.sleep(1.0)  # the last records reach the watcher
        watch.stopping.set()
        watch.join(10)
        for worker in list(cluster.workers):
            worker.stop()
        note("checking")
        report = check_pipeline(settings)
        late = lateness(report, watch.seen, faults, t0)
        amended = amended_near(report, watch.seen, faults, t0)
        counts: Counter[str] = Counter()
        for worker in cluster.all_workers:
            text = worker.log_text()
            for name, pattern in LOG_PATTERNS.items():
                counts[name] += len(pattern.findall(text))
        result = RunResult(
            scenario=scenario, report=report, faults=faults, published=publisher.acked, load_s=load_s,
            lag_zero_after_fault_s=None if lag_zero_at is None else max(0.0, lag_zero_at - last_fault),
            lag_zero_after_publish_s=None if lag_zero_at is None else lag_zero_at - published_at,
            drained_s=None if drained_at is None else drained_at - published_at,
            log_counts=counts, problems=problems, root=root, late=late, amended=amended,
        )
        note(result.table())
        for text in late.notes:
            note(f"late: {text}")
        for text in report.examples:
            note(f"example: {text}")
        if keep_on_failure and not result.ok:
            keep = True
            result.cluster = cluster
        return result
    finally:
        journal.close()
        if not keep:
            cluster.close()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        shutil.copy2(source, target)
