"""Child processes of the benchmark: spawn, follow their output, measure CPU and memory.

Every contender runs in a process of its own. Its output is read line by line by a
thread (kept in a log file), so a line can be waited for and timed as it arrives.
CPU time is read with psutil (user + system, all threads), peak RSS from the
kernel's high-water mark (``VmHWM``), so neither depends on sampling.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from pipeline.devtools.process import SessionizerProcess, get_json
from pipeline.devtools.services import terminate


class Measured:
    """CPU time and memory of a child process (``ps``: its psutil handle)."""

    ps: psutil.Process

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def thread_cpu_s(self) -> dict[int, float]:
        """CPU seconds of each thread of the process, by thread id (the main thread's is
        the pid)."""
        return {t.id: float(t.user_time + t.system_time) for t in self.ps.threads()}

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """The kernel's high-water mark of the resident set (bytes)."""
        try:
            for line in Path(f"/proc/{self.ps.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return self.rss()


class Worker(SessionizerProcess, Measured):
    """A ``sessionizer worker`` (:mod:`pipeline.devtools.process`), spawned at once;
    ready when its ``/healthz`` answers with partitions assigned."""

    def __init__(self, name: str, env: Mapping[str, str], *, cwd: str | os.PathLike[str],
                 log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_bytes(b"")
        super().__init__("worker", env=env, cwd=Path(cwd), log_path=log_path, grace_s=10.0)
        self.name = name
        self.started_at = time.monotonic()
        self.spawn()
        assert self.pid is not None
        self.ps = psutil.Process(self.pid)

    def partitions(self, timeout: float) -> tuple[float, list[int]]:
        """Once ready: when it was seen ready (monotonic) and its assigned partitions."""
        self.wait_ready(timeout)
        at = time.monotonic()
        assert self.health_url is not None
        _, body = get_json(self.health_url)
        return at, [int(p) for p in body["partitions"]]

    def tail(self, n: int = 30) -> str:
        return self.log_tail(n)

    def check_alive(self) -> None:
        if not self.running:
            raise RuntimeError(f"{self.name} exited with code {self.returncode}; "
                               f"its log ({self.log_path}) ends with:\n{self.tail()}")


class Child(Measured):
    """One child process; ``lines`` holds ``(monotonic time, line)`` as they arrived."""

    def __init__(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None, log_path: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("w", encoding="utf-8", errors="replace")
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.ps = psutil.Process(self.proc.pid)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            now = time.monotonic()
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.write(line + "\n")
            with self._cond:
                self.lines.append((now, line))
                self._cond.notify_all()
        self._log.flush()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str | re.Pattern[str], timeout: float, *, start: int = 0
                 ) -> tuple[float, re.Match[str], int]:
        """The first line (from index ``start``) matching ``pattern``: (time, match, index)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        index = start
        with self._cond:
            while True:
                while index < len(self.lines):
                    at, line = self.lines[index]
                    found = regex.search(line)
                    index += 1
                    if found:
                        return at, found, index
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; "
                                       f"its log ({self.log_path}) ends with:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self.name}: no line matching {regex.pattern!r} within "
                                       f"{timeout:g} s; its log ({self.log_path}) ends with:\n{self.tail()}")
                self._cond.wait(min(left, 0.5))

    def tail(self, n: int = 30) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; "
                               f"its log ({self.log_path}) ends with:\n{self.tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` (this child only)."""
        proc = self.proc
        terminate(proc, timeout)
        self._reader.join(5)
        with contextlib.suppress(Exception):
            self._log.close()
        return proc.returncode


class Sampler:
    """Samples CPU and RSS of named processes every ``interval`` s, in a thread."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.procs: dict[str, psutil.Process] = {}
        self.samples: list[tuple[float, str, float, int]] = []  # (t, name, cpu_s, rss)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def watch(self, name: str, pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            self.procs[name] = psutil.Process(pid)

    def unwatch(self, name: str) -> None:
        self.procs.pop(name, None)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            t = psutil.cpu_times()
            busy = sum(t) - t.idle - getattr(t, "iowait", 0.0)
            self.samples.append((now, "@machine", busy, 0))
            for name, proc in list(self.procs.items()):
                try:
                    t = proc.cpu_times()
                    self.samples.append((now, name, t.user + t.system, proc.memory_info().rss))
                except psutil.Error:
                    self.procs.pop(name, None)

    def others_share(self, t0: float, t1: float) -> float | None:
        """The share of the machine (in cores) that processes not watched here used."""
        machine = self.cpu_between("@machine", t0, t1)
        if machine is None or t1 <= t0:
            return None
        names = {n for _, n, _, _ in self.samples if n != "@machine"}
        ours = sum(self.cpu_between(n, t0, t1) or 0.0 for n in names)
        return max(0.0, machine - ours) / (t1 - t0)

    def cpu_between(self, name: str, t0: float, t1: float) -> float | None:
        """CPU seconds ``name`` used between two monotonic times (nearest samples)."""
        series = [(t, c) for t, n, c, _ in self.samples if n == name]
        if not series:
            return None
        before = [c for t, c in series if t <= t0] or [series[0][1]]
        after = [c for t, c in series if t >= t1] or [series[-1][1]]
        return after[0] - before[-1]
