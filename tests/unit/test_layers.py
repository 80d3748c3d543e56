"""The package's layers (docs/design.md, "Layout"): a module imports only from its own
layer or a lower one. Every ``import`` under pipeline/ counts, including those inside
functions and under ``TYPE_CHECKING``.

Layers, lowest first:

0. ``pipeline.exceptions``: the exception tree; imports nothing of pipeline.
1. ``pipeline.core``: the pure domain; imports the exceptions and itself only.
2. the root: ``pipeline`` (its ``__init__``), ``config``, ``logs``, ``security``,
   ``topics``, ``credentials``, ``access``, ``ratelimit``; configuration builds the core's
   ``SessionRules``, so the root sits above the core.
3. ``pipeline.store``: session state in Redis (or memory).
4. the services: ``worker``, ``report``, ``export``, ``client``; peers that never
   import one another.
5. ``pipeline.gateway``: the HTTP front; it ingests events and serves the report.
6. ``pipeline.devtools``: embedded services, traffic generator, checker; may import
   every layer below it, and nothing outside ``devtools`` and ``cli`` imports it.
7. ``pipeline.cli``: the ``sessionizer`` commands, the top: they wire everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"

ROOT_MODULES = frozenset({"config", "logs", "security", "topics", "credentials", "access", "ratelimit"})
SERVICES = frozenset({"worker", "report", "export", "client"})
LAYER_NAMES = ("exceptions", "core", "root", "store", "services", "gateway", "devtools", "cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The part of the package a module belongs to: ``pipeline.worker.app`` -> ``worker``,
    ``pipeline.config`` -> ``config``, ``pipeline`` -> ``pipeline``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pipeline"


def layer(module: str) -> int:
    name = unit(module)
    if name == "exceptions":
        return 0
    if name == "core":
        return 1
    if name in ROOT_MODULES or name == "pipeline":
        return 2
    if name == "store":
        return 3
    if name in SERVICES:
        return 4
    if name == "gateway":
        return 5
    if name == "devtools":
        return 6
    if name == "cli":
        return 7
    raise AssertionError(
        f"{module} is in no layer: add it to one in tests/unit/test_layers.py and to the "
        "Layout section of docs/design.md"
    )


def imports(own: str, source: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """``(line, imported module)`` for every import of pipeline in module ``own``."""
    tree = ast.parse(source)
    package = own if is_package else own.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "pipeline":
                # ``from pipeline import config``: each name is a module of the package.
                found += [(node.lineno, f"pipeline.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "pipeline" or name.startswith("pipeline.")]


def violations(own: str, source: str, *, is_package: bool = False) -> list[str]:
    mine = layer(own)
    wrong = []
    for line, target in imports(own, source, is_package=is_package):
        theirs = layer(target)
        where = f"{own}, line {line} ({LAYER_NAMES[mine]})"
        if theirs > mine:
            wrong.append(f"{where} imports {target} from the higher layer {LAYER_NAMES[theirs]}")
        elif mine == theirs == 4 and unit(own) != unit(target):
            wrong.append(f"{where} imports {target}: the services are peers and never import one another")
    return wrong


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_the_layers_are_ordered() -> None:
    order = ["pipeline.exceptions", "pipeline.core.engine", "pipeline.config", "pipeline.store.redis",
             "pipeline.worker.app", "pipeline.gateway.app", "pipeline.devtools.services",
             "pipeline.cli.commands"]
    assert [layer(name) for name in order] == list(range(len(LAYER_NAMES)))


def test_every_module_is_in_a_layer() -> None:
    assert len(MODULES) > 50
    for path in MODULES:
        layer(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_higher_layer(path: Path) -> None:
    source = path.read_text(encoding="utf-8")
    assert violations(module_name(path), source, is_package=path.name == "__init__.py") == []


def test_the_rule_names_each_offending_import() -> None:
    source = (
        "from pipeline.core.event import Event\n"
        "from . import heap\n"
        "from ..report.api import ReportApi\n"
        "def f():\n"
        "    from pipeline.cli.status import run_status\n"
        "    import pipeline.devtools.services\n"
    )
    assert violations("pipeline.worker.probe", source) == [
        "pipeline.worker.probe, line 3 (services) imports pipeline.report.api: "
        "the services are peers and never import one another",
        "pipeline.worker.probe, line 5 (services) imports pipeline.cli.status from the higher layer cli",
        "pipeline.worker.probe, line 6 (services) imports pipeline.devtools.services from the "
        "higher layer devtools",
    ]
    assert violations("pipeline.core.engine", "from pipeline import config\n") == [
        "pipeline.core.engine, line 1 (core) imports pipeline.config from the higher layer root"
    ]
    assert violations("pipeline.devtools.checker", "from pipeline.worker.routing import Router\n") == []
    assert violations("pipeline.cli.dev", "from pipeline.devtools.services import free_port\n") == []
    assert violations("pipeline.gateway.app", "from pipeline.report.api import ReportApi\n") == []
