"""``sessionizer`` child processes for the integration tests: started with an exact
environment, their output in a log file, stopped with SIGTERM (then SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import Settings

REPO = Path(__file__).resolve().parents[2]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a process exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"SESSIONIZER_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def sessionizer() -> list[str]:
    """The command that runs ``sessionizer`` from this environment."""
    script = Path(sys.executable).parent / "sessionizer"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> int:
    """SIGTERM, up to ``grace_s`` to exit, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Child:
    """``sessionizer <command>`` in a process of its own."""

    def __init__(self, command: str, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [*sessionizer(), command, *args], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop(self.proc)


class Worker(Child):
    """A ``sessionizer worker``; ready once it logs its partitions."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        super().__init__("worker", settings_env(settings), log_path)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while "assigned partitions [0" not in self.log():
            assert self.proc.poll() is None, f"worker exited:\n{self.log()[-3000:]}"
            assert time.monotonic() < deadline, f"worker not ready:\n{self.log()[-3000:]}"
            time.sleep(0.1)
