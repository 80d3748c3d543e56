"""One ``sessionizer <command>`` child process, for the tests and the benchmark.

Start it with given settings, wait until its health endpoint answers, stop it::

    with SessionizerProcess("worker", settings, log_path=tmp / "worker.log") as worker:
        ...  # worker.health_url, worker.log_tail(), worker.kill(), worker.restart()

- Settings: a :class:`~pipeline.config.Settings` (every field is set) or a mapping of
  field names (or their ``SESSIONIZER_*`` variables) to values; ``env`` adds or overrides
  environment variables. The base environment is this process's, minus ``SESSIONIZER_*``,
  so the child runs with exactly what it is given.
- Ports: each of ``SESSIONIZER_WEB_PORT`` (worker), ``SESSIONIZER_GATEWAY_PORT`` and
  ``SESSIONIZER_GATEWAY_ADMIN_PORT`` (gateway) that is 0 or unset is replaced by a free
  loopback port, so the helper knows where to ask (:attr:`SessionizerProcess.ports`).
- Ready: a worker when ``GET /healthz`` on its web port answers 200 with partitions
  and ``/metrics`` counts as many in ``sessionizer_assigned_partitions`` (its
  assignment claimed in full, when it logs ``assigned partitions [...]``); a gateway
  when ``GET /healthz`` on its admin port answers 200. Commands
  without a health endpoint (``export``, ``dev``, ...) are ready once started, unless a
  ``ready`` callback says otherwise (e.g. a line in :meth:`SessionizerProcess.log_text`).
  A process that exits before it is ready, or is not ready in time, raises
  :class:`ProcessNotReady` with the tail of its log.
- Stop: SIGTERM, then SIGKILL after a grace period; :meth:`~SessionizerProcess.kill` is
  SIGKILL at once (fault tests); :meth:`~SessionizerProcess.restart` stops and starts
  again with the same settings and ports, appending to the same log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from pipeline.config import Settings
from pipeline.devtools.services import free_port, kill_now, terminate
from pipeline.exceptions import ProcessNotReady

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
PREFIX = "SESSIONIZER_"
#: the worker's gauge of its claimed partitions, set once an assignment is claimed in full
ASSIGNED_GAUGE = "sessionizer_assigned_partitions"

#: the port variables of each command that the helper fills with free ports
PORTS: dict[str, tuple[str, ...]] = {
    "worker": ("WEB_PORT",),
    "gateway": ("GATEWAY_PORT", "GATEWAY_ADMIN_PORT"),
}


def sessionizer_command() -> list[str]:
    """The ``sessionizer`` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "sessionizer"
    if script.exists():
        return [str(script)]
    found = shutil.which("sessionizer")
    if found:
        return [found]
    return [sys.executable, "-m", "pipeline.cli"]


def _text(value: Any) -> str:
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def settings_env(settings: Settings | Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment that gives a child exactly ``settings`` (plus ``env``)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    if isinstance(settings, Settings):
        items: Mapping[str, Any] = {name: getattr(settings, name) for name in Settings.model_fields}
    else:
        items = settings or {}
    for name, value in items.items():
        key = name.upper() if name.upper().startswith(PREFIX) else PREFIX + name.upper()
        out[key] = _text(value)
    out.update(env or {})
    out["PYTHONUNBUFFERED"] = "1"
    return out


def get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    """``GET url``: its status and JSON body (None if the body is not JSON)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def answers(url: str, timeout_s: float = 2.0) -> bool:
    """``GET url`` answers 200 (False while nothing listens there)."""
    try:
        return get_json(url, timeout_s)[0] == 200
    except OSError:  # refused, reset, timed out (URLError is one)
        return False


def _host(value: str | None) -> str:
    return LOOPBACK if not value or value in ("0.0.0.0", "::", "localhost") else value


class SessionizerProcess:
    """``sessionizer <command> [args]`` in a process of its own, its output in a log file."""

    def __init__(
        self,
        command: str,
        settings: Settings | Mapping[str, Any] | None = None,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: Path | str | None = None,
        ready: Callable[[SessionizerProcess], bool] | None = None,
        argv: Sequence[str] | None = None,
        cwd: Path | str = REPO,
        timeout_s: float = 60.0,
        grace_s: float = 15.0,
    ) -> None:
        self.command = command
        self.settings = settings if isinstance(settings, Settings) else None
        self.args = list(args)
        self.env = settings_env(settings, env)
        self.ports: dict[str, int] = {}
        for name in PORTS.get(command, ()):
            key = PREFIX + name
            if self.env.get(key, "0") in ("", "0"):
                self.env[key] = str(free_port())
            self.ports[name.lower()] = int(self.env[key])
        if log_path is None:
            handle, log_name = tempfile.mkstemp(prefix=f"sessionizer-{command}-", suffix=".log")
            os.close(handle)
            log_path = log_name
        self.log_path = Path(log_path)
        self.ready = ready
        #: the ``sessionizer`` command and where it runs (another installation can be given)
        self.argv: list[str] = list(argv) if argv is not None else sessionizer_command()
        self.cwd = Path(cwd)
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.proc: subprocess.Popen[bytes] | None = None

    # -- what a test looks at ---------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    @property
    def health_url(self) -> str | None:
        """The URL whose 200 says the process is up (None: the command has none)."""
        if self.command == "worker":
            host = _host(self.env.get(PREFIX + "WEB_HOST"))
            return f"http://{host}:{self.ports['web_port']}/healthz"
        if self.command == "gateway":
            host = _host(self.env.get(PREFIX + "GATEWAY_ADMIN_HOST"))
            return f"http://{host}:{self.ports['gateway_admin_port']}/healthz"
        return None

    def url(self, path: str, port: str | None = None) -> str:
        """``http://host:port/path`` on one of :attr:`ports` (the first by default)."""
        name = port or next(iter(self.ports))
        return f"http://{LOOPBACK}:{self.ports[name]}/{path.lstrip('/')}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- life cycle -------------------------------------------------------------------

    def spawn(self) -> SessionizerProcess:
        """Start the process without waiting for it to be ready."""
        if self.running:
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*self.argv, self.command, *self.args],
                cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def start(self, timeout_s: float | None = None) -> SessionizerProcess:
        """Start the process and wait until it is ready (:meth:`wait_ready`)."""
        self.spawn()
        return self.wait_ready(timeout_s)

    def is_ready(self) -> bool:
        """Ready right now: the ``ready`` callback, else the health endpoint."""
        if self.ready is not None:
            return self.ready(self)
        url = self.health_url
        if url is None:
            return self.running
        try:
            status, body = get_json(url, timeout_s=2.0)
        except OSError:  # nothing listens yet (URLError is an OSError)
            return False
        if status != 200:
            return False
        if self.command == "worker":
            return isinstance(body, dict) and self._claimed(len(body.get("partitions") or ()))
        return True

    def _claimed(self, listed: int) -> bool:
        """The worker has claimed every partition of its assignment: ``/healthz`` lists
        partitions as they are claimed, one by one, and ``sessionizer_assigned_partitions``
        on ``/metrics`` counts them once all are."""
        if not listed:
            return False
        assert self.health_url is not None
        metrics = self.health_url.replace("/healthz", "/metrics")
        try:
            with urllib.request.urlopen(metrics, timeout=2.0) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError:
            return False
        for line in text.splitlines():
            if line.startswith(ASSIGNED_GAUGE + " "):
                return float(line.split()[1]) == listed
        return False

    def ready_within(self, timeout_s: float) -> bool:
        """Poll :meth:`is_ready` for up to ``timeout_s``; False if the process exits or
        is not ready by then (it is left as it is)."""
        deadline = time.monotonic() + timeout_s
        while self.running:
            if self.is_ready():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return False

    def wait_ready(self, timeout_s: float | None = None) -> SessionizerProcess:
        """Wait until :meth:`is_ready`; :class:`ProcessNotReady` if the process exits
        first or is not ready within ``timeout_s`` (then it is stopped)."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        what = f"sessionizer {self.command}"
        while True:
            if self.proc is None:
                raise ProcessNotReady(f"{what} was never started; call start() first")
            if self.is_ready():
                return self
            code = self.proc.poll()
            if code is not None:
                raise ProcessNotReady(
                    f"{what} exited with code {code} before it was ready; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                self.stop()
                probe = self.health_url or "its ready callback"
                raise ProcessNotReady(
                    f"{what} was not ready within {timeout:g} s ({probe}); "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        """Send ``sig`` if the process runs."""
        if self.running and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    def stop(self, grace_s: float | None = None) -> int | None:
        """SIGTERM (and SIGCONT, should it be paused), up to ``grace_s`` to exit, then
        SIGKILL; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        return terminate(proc, self.grace_s if grace_s is None else grace_s)

    def kill(self) -> int | None:
        """SIGKILL at once (a crash); the exit code."""
        proc = self.proc
        if proc is None:
            return None
        return kill_now(proc)

    def restart(self, timeout_s: float | None = None) -> SessionizerProcess:
        """Stop (SIGTERM, then SIGKILL) and start again with the same settings and ports."""
        self.stop()
        self.proc = None
        return self.start(timeout_s)

    def __enter__(self) -> SessionizerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SessionizerProcess {self.command} pid={self.pid} log={self.log_path}>"
