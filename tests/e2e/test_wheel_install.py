"""The package as a user installs it: a wheel built from the sources, installed (not
editable) into a fresh virtualenv outside the checkout, its ``sessionizer worker`` run
from there against the test broker and Redis. The schemas must come from the wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_clean_env())
    assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") and not k.startswith("SESSIONIZER_")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with the wheel of this checkout installed; its ``bin`` folder."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"  # what the image build copies (deploy/Dockerfile), nothing else
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in ("pipeline", "clients/python/sessionizer_client"):
        shutil.copytree(REPO / folder, source / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"),
          str(source)], cwd=root)
    [wheel] = (root / "dist").glob("sessionizer_pipeline-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=root)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
          "--disable-pip-version-check", str(wheel)], cwd=root)
    shutil.rmtree(source)  # nothing of the sources is left to fall back on
    return venv / "bin"


def test_the_installed_package_reads_its_schemas_from_the_wheel(installed: Path) -> None:
    out = _run([str(installed / "python"), "-c",
                "import pipeline, pipeline.core.parse as p; print(pipeline.__file__); "
                "print(p.schema_dir()); p.EventSchema.load()"], cwd=installed.parent)
    module, schemas = out.split()
    site = str(installed.parent / "lib")
    assert module.startswith(site) and schemas.startswith(site), out
    assert not module.startswith(str(REPO))


def test_a_missing_schema_folder_stops_the_worker_in_one_line(installed: Path) -> None:
    done = subprocess.run([str(installed / "sessionizer"), "worker"], cwd=installed.parent,
                          capture_output=True, text=True, timeout=120,
                          env=_clean_env(SESSIONIZER_SCHEMA_DIR="/nonexistent/schemas"))
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert "SESSIONIZER_SCHEMA_DIR" in line and "/nonexistent/schemas" in line


@pytest.mark.timeout(900)
def test_the_installed_worker_closes_a_session(
    installed: Path, worker_factory: Callable[..., Any], publish: Callable[..., Any],
    read_topic: Callable[..., Any],
) -> None:
    worker = worker_factory(inactivity_timeout=3)
    worker.argv = [str(installed / "sessionizer")]
    worker.cwd = installed.parent
    worker.env = {k: v for k, v in worker.env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    worker.start(timeout=120)
    now = int(time.time() * 1000)
    events = [
        {"type": "session", "timestamp": now, "user_id": "wheel-user", "id": "w1"},
        {"type": "usage", "timestamp": now + 10, "user_id": "wheel-user", "id": "w2"},
        {"type": "sessionend", "timestamp": now + 20, "user_id": "wheel-user", "id": "w3"},
    ]
    publish(worker.bootstrap, worker.events_topic,
            [(b"wheel-user", orjson.dumps(e), e["timestamp"], None) for e in events])
    [record] = read_topic(worker.bootstrap, worker.sessions_topic, 1, timeout=120, settle=1)
    session = orjson.loads(record.value)
    assert (session["user_id"], session["close_reason"], session["event_count"]) == (
        "wheel-user", "ended", 3)
    assert [e["id"] for e in session["events"]] == ["w1", "w2", "w3"]
    assert worker.running
