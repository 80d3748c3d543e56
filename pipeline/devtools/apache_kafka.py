"""An embedded Apache Kafka broker (single node, KRaft combined mode) for tests, the demo
and the benchmark, beside the Tansu launcher of :mod:`pipeline.devtools.services`.

The broker's runtime classpath is resolved from Maven Central with ``mvn`` (a small pom
written into the cache directory, ``$SESSIONIZER_KAFKA_CACHE`` or
``~/.cache/sessionizer/kafka-<version>``) and reused between runs; the jars themselves
stay in Maven's local repository (``~/.m2``). ``python -m pipeline.devtools.apache_kafka warm``
resolves it ahead of time (``.ci/run`` does, so a first download is not counted against a
test's timeout).

:class:`EmbeddedKafka` has the interface of :class:`~pipeline.devtools.services.EmbeddedBroker`
(``start``, ``stop``, ``kill``, ``pause``, ``resume``, ``restart``, ``close``,
``bootstrap``, ``url``, ``create_topics``). It formats its data directory once
(``kafka.tools.StorageTool format``) and keeps it across :meth:`stop` / :meth:`restart`,
so topics, records and committed offsets survive a restart; :meth:`close` removes it.
The JVM heap is bounded (``-Xmx512m`` by default) and the broker is configured for tests:
no initial rebalance delay, replication factor 1 for the internal topics, few threads.

Needs Java 17+ (``java``) and, until the classpath is cached, Maven (``mvn``);
:func:`kafka_unavailable_reason` says what is missing and how to get it.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.devtools.services import LOOPBACK, _KafkaService, free_port, kafka_metadata_request
from pipeline.exceptions import ServiceStartError

__all__ = [
    "KAFKA_VERSION",
    "EmbeddedKafka",
    "kafka_classpath",
    "kafka_metadata_v4_ready",
    "kafka_unavailable_reason",
    "process_rss_bytes",
]

#: The Apache Kafka version the tests, the demo and the benchmark run (docker-compose.yml
#: pins the same image).
KAFKA_VERSION = "4.4.0"
#: log4j 2 binding for Kafka's slf4j 1.7 logging (the version Kafka 4.4 itself uses).
_LOG4J_VERSION = "2.25.5"

INSTALL_HINT = (
    "Apache Kafka needs Java 17+ and Maven: `apt-get install openjdk-17-jre-headless maven` "
    "(Maven Central must be reachable the first time; the classpath is cached after that)"
)

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by pipeline.devtools.apache_kafka: resolves the runtime classpath of an Apache Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>sessionizer</groupId>
  <artifactId>embedded-kafka</artifactId>
  <version>{version}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.log.name = kafka.log
logger.log.level = WARN
logger.storage.name = org.apache.kafka.storage
logger.storage.level = WARN
"""

#: Broker settings for a fast single-node test broker (more can be passed as ``config=``).
TEST_BROKER_CONFIG: dict[str, str] = {
    "num.partitions": "4",  # auto-created topics get 4 partitions, as on Tansu
    "auto.create.topics.enable": "true",
    "delete.topic.enable": "true",
    "offsets.topic.replication.factor": "1",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "4",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    # accept record timestamps far ahead (Kafka's default refuses those over an hour
    # ahead), so that the tests feed the worker what a broker set so would pass on
    "log.message.timestamp.after.max.ms": str(2**63 - 1),
    "num.network.threads": "2",
    "num.io.threads": "4",
    "background.threads": "4",
    "num.recovery.threads.per.data.dir": "1",
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": str(4 << 20),
}


def _cache_dir(version: str) -> Path:
    override = os.environ.get("SESSIONIZER_KAFKA_CACHE")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sessionizer" / f"kafka-{version}"


def _read_classpath(path: Path) -> list[str] | None:
    try:
        entries = [e for e in path.read_text().strip().split(os.pathsep) if e]
    except OSError:
        return None
    if entries and all(os.path.isfile(e) for e in entries):
        return entries
    return None


def kafka_classpath(version: str = KAFKA_VERSION, *, timeout: float = 900.0) -> str:
    """The broker's runtime classpath, resolved with ``mvn`` on first use and cached."""
    cache = _cache_dir(version)
    cache.mkdir(parents=True, exist_ok=True)
    cp_file = cache / "classpath.txt"
    cached = _read_classpath(cp_file)
    if cached:
        return os.pathsep.join(cached)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one resolution at a time (parallel processes)
        cached = _read_classpath(cp_file)
        if cached:
            return os.pathsep.join(cached)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise ServiceStartError(f"cannot resolve Apache Kafka {version}: no `mvn` on PATH. {INSTALL_HINT}")
        pom = cache / "pom.xml"
        pom.write_text(_POM.format(version=version, log4j=_LOG4J_VERSION))
        started = time.monotonic()
        tmp = cache / "classpath.txt.tmp"
        proc = subprocess.run(
            [mvn, "-q", "-B", "-f", str(pom), "dependency:build-classpath",
             f"-Dmdep.outputFile={tmp}", "-Dmdep.includeScope=runtime"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False,
        )
        if proc.returncode != 0 or _read_classpath(tmp) is None:
            raise ServiceStartError(
                f"`mvn dependency:build-classpath` for Apache Kafka {version} failed "
                f"(exit {proc.returncode}); check that Maven Central is reachable. Its output ends with:\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            )
        tmp.replace(cp_file)
        print(f"# resolved Apache Kafka {version} with mvn in {time.monotonic() - started:.1f}s "
              f"({cp_file})", file=sys.stderr, flush=True)
        return cp_file.read_text().strip()


def kafka_unavailable_reason(version: str = KAFKA_VERSION) -> str | None:
    """None when an :class:`EmbeddedKafka` can start here, else why not and what to do."""
    if shutil.which("java") is None:
        return f"no `java` on PATH. {INSTALL_HINT}"
    if _read_classpath(_cache_dir(version) / "classpath.txt") is None and shutil.which("mvn") is None:
        return f"no `mvn` on PATH and no cached classpath for Apache Kafka {version}. {INSTALL_HINT}"
    return None


def kafka_metadata_v4_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker answers a Metadata v4 request with at least one broker.

    (Apache Kafka 4 no longer answers the v0 request of
    :func:`pipeline.devtools.services.kafka_metadata_ready`.)
    """
    correlation_id = 0x5E56
    # all topics, no auto-creation
    payload = kafka_metadata_request(host, port, 4, correlation_id, struct.pack(">ib", -1, 0), timeout)
    if payload is None or len(payload) < 12:
        return False
    got_id, _throttle, brokers = struct.unpack(">iii", payload[:12])
    return bool(got_id == correlation_id and brokers >= 1)


def process_rss_bytes(pid: int | None) -> int:
    """Resident set size of a process (Linux ``/proc``), 0 when unknown."""
    if pid is None:
        return 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _cluster_id() -> str:
    """A cluster id as ``kafka-storage random-uuid`` makes one (a UUID in URL-safe base64).
    One in 64 begins with ``-``: it is passed as ``--cluster-id=<id>`` so the storage
    tool does not read it as an option."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


class EmbeddedKafka(_KafkaService):
    """A single-node Apache Kafka broker (KRaft, broker and controller in one JVM).

    >>> with EmbeddedKafka() as kafka:            # doctest: +SKIP
    ...     kafka.create_topics({"events": 8})
    """

    name = "kafka"
    kind = "kafka"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        config: Mapping[str, str] | None = None,
        jvm_args: Sequence[str] = (),
        start_timeout: float = 120.0,
        workdir: str | os.PathLike[str] | None = None,
        kill_with_parent: bool = True,
        announce: bool = False,
    ) -> None:
        super().__init__(port, host, start_timeout, workdir, kill_with_parent)
        self.version = version
        self.heap = heap
        self.config = {**TEST_BROKER_CONFIG, **(config or {})}
        self.jvm_args = list(jvm_args)
        self.announce = announce
        self.controller_port = 0
        self._classpath: str | None = None

    @property
    def data_dir(self) -> Path:
        return self._workdir() / "data"

    def rss_bytes(self) -> int:
        """The broker JVM's resident memory now (0 when not running)."""
        return process_rss_bytes(self.pid)

    def start(self) -> EmbeddedKafka:
        self._classpath = self._classpath or kafka_classpath(self.version)
        super().start()
        if self.announce:
            print(f"# Apache Kafka {self.version} on {self.bootstrap}: started in "
                  f"{self.startup_seconds:.1f}s, RSS {self.rss_bytes() / 2**20:.0f} MiB "
                  f"(heap {self.heap})", file=sys.stderr, flush=True)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (Kafka flushes and closes its logs), SIGKILL after *timeout*."""
        super().stop(timeout)

    def restart(self, stop_timeout: float = 30.0) -> EmbeddedKafka:
        return super().restart(stop_timeout)

    # -- internals --------------------------------------------------------------
    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            raise ServiceStartError(f"cannot start Apache Kafka: no `java` on PATH. {INSTALL_HINT}")
        return java

    def _properties(self) -> Path:
        if not self.controller_port:
            self.controller_port = free_port(self.host)
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            **self.config,
        }
        path = self._workdir() / "server.properties"
        path.write_text("".join(f"{key}={value}\n" for key, value in lines.items()))
        (self._workdir() / "log4j2.properties").write_text(_LOG4J2)
        return path

    def _jvm(self) -> list[str]:
        assert self._classpath is not None
        return [
            self._java(), f"-Xmx{self.heap}", f"-Xms{self.heap}", "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._workdir() / 'log4j2.properties'}",
            "-Dlog4j2.disable.jmx=true", *self.jvm_args, "-cp", self._classpath,
        ]

    def _format(self, properties: Path) -> None:
        if (self.data_dir / "meta.properties").exists():
            return  # formatted before: keep the data (a restart)
        command = [*self._jvm(), "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}",
                   "--config", str(properties), "--ignore-formatted"]
        proc = subprocess.run(command, cwd=self._workdir(), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=self.start_timeout, check=False)
        if proc.returncode != 0:
            raise ServiceStartError(
                f"formatting Apache Kafka's storage in {self.data_dir} failed (exit {proc.returncode}):\n"
                + "\n".join((proc.stdout + proc.stderr).splitlines()[-20:])
            )

    def _command(self) -> list[str]:
        properties = self._properties()
        self._format(properties)
        return [*self._jvm(), "kafka.Kafka", str(properties)]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("KAFKA_OPTS", "KAFKA_HEAP_OPTS", "JAVA_TOOL_OPTIONS", "CLASSPATH"):
            env.pop(var, None)
        return env

    def _ready(self) -> bool:
        return kafka_metadata_v4_ready(self.host, self.port, timeout=0.5)


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.devtools.apache_kafka warm|run``: resolve the classpath, or run a broker."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.apache_kafka", description=_main.__doc__)
    parser.add_argument("action", choices=("warm", "run"))
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.action == "warm":
        reason = kafka_unavailable_reason()
        if reason:
            print(f"# Apache Kafka unavailable: {reason}", file=sys.stderr)
            return 1
        started = time.monotonic()
        entries = kafka_classpath().split(os.pathsep)
        print(f"# Apache Kafka {KAFKA_VERSION}: {len(entries)} jars on the classpath "
              f"({time.monotonic() - started:.1f}s)", flush=True)
        return 0
    with EmbeddedKafka(args.port, announce=True) as kafka:
        print(f"SESSIONIZER_KAFKA_BOOTSTRAP={kafka.bootstrap}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while kafka.running:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
