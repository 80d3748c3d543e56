"""Every exception class of the package is defined in pipeline/exceptions.py and derives
from the one root, and the tree drawn in its docstring names each of them."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pipeline.exceptions as exceptions
from pipeline.exceptions import SessionizerError

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "pipeline"

#: Defined elsewhere on purpose (the module docstring says why): the pure core may not
#: import the exception module.
ELSEWHERE = {
    ("pipeline/core/timefmt.py", "TimestampError"),
}


def _is_exception(node: ast.ClassDef, known: set[str]) -> bool:
    for base in node.bases:
        name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
        if name in known or name.endswith(("Error", "Exception")) or name in {
            "BaseException", "Exception",
        }:
            return True
    return False


def exception_classes() -> list[tuple[str, str, int]]:
    """``(file, class, line)`` of every class under pipeline/ that derives from an exception."""
    known = set(exceptions.__all__) | {"ValueError", "Exception"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and _is_exception(node, known):
                found.append((str(path.relative_to(ROOT)), node.name, node.lineno))
    return found


def test_every_exception_class_is_defined_in_the_exception_module() -> None:
    found = exception_classes()
    assert ("pipeline/exceptions.py", "ConfigError") in {(f, c) for f, c, _ in found}
    outside = [
        f"{file}:{line}: {name}" for file, name, line in found
        if file != "pipeline/exceptions.py" and (file, name) not in ELSEWHERE
    ]
    assert outside == [], "move these into pipeline/exceptions.py, under SessionizerError"


def test_the_exceptions_kept_elsewhere_still_exist() -> None:
    found = {(file, name) for file, name, _ in exception_classes()}
    assert found >= ELSEWHERE


def test_every_exception_derives_from_the_root_and_is_in_the_tree() -> None:
    doc = exceptions.__doc__ or ""
    for name in exceptions.__all__:
        cls = getattr(exceptions, name)
        assert inspect.isclass(cls) and issubclass(cls, SessionizerError), name
        assert re.search(rf"^ +[│├└─ ]*{name}\b", doc, re.MULTILINE), f"{name} is missing from the tree"


def test_every_class_defined_in_the_module_is_exported() -> None:
    defined = {
        name for name, value in vars(exceptions).items()
        if inspect.isclass(value) and value.__module__ == exceptions.__name__
    }
    assert defined <= set(exceptions.__all__)
    assert len(defined) >= 12
