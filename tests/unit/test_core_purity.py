"""``pipeline.core`` is pure: importing (and using) it pulls in no I/O framework."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "pipeline" / "core"
FORBIDDEN = frozenset(
    {"kafka", "aiokafka", "faust", "mode", "redis", "asyncio", "aiohttp", "socket"}
)


def core_modules() -> list[str]:
    modules = []
    for path in sorted(CORE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.append(".".join(parts))
    return modules


PROBE = """
import importlib, json, sys
sys.path.insert(0, {root!r})
for name in {modules!r}:
    importlib.import_module(name)
# Use the parser once: compiling the event schema must not pull anything in either.
from pipeline.core.parse import EventParser
from pipeline.core.rules import SessionRules
EventParser(SessionRules()).parse(b'{{"type": "usage", "timestamp": 1, "user_id": "u"}}',
                                  arrival_ms=1, partition=0, offset=0)
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}})))
"""


def test_there_are_core_modules() -> None:
    assert {"pipeline.core.event", "pipeline.core.parse", "pipeline.core.deadletter"} <= set(
        core_modules()
    )


def test_importing_the_core_loads_no_io_framework() -> None:
    modules = core_modules()
    # -I: isolated from PYTHONPATH, the user site and the current directory.
    result = subprocess.run(
        [sys.executable, "-I", "-c", PROBE.format(root=str(ROOT), modules=modules)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.strip().splitlines()[-1]))
    assert "pipeline" in loaded
    assert loaded & FORBIDDEN == set(), f"pipeline.core pulled in {sorted(loaded & FORBIDDEN)}"


def test_core_sources_import_no_io_framework() -> None:
    # Catches imports inside functions too, which the probe above may not execute.
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                if name.split(".")[0] in FORBIDDEN:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert offenders == []
