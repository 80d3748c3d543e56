"""Write ``docs/configuration.md`` from the settings classes' own field descriptions.

    python scripts/gen_config_doc.py           # rewrite docs/configuration.md
    python scripts/gen_config_doc.py --check   # exit 1 when the committed file is out of date

Every row comes from a pydantic-settings field: the environment variable (the class's
``env_prefix`` + the field name upper-cased), the default, what values it accepts (from
the field's type and constraints) and its ``description=``. Sections follow the
``# -- name ---`` comments in the class body. ``tests/unit/test_docs_generated.py``
fails when the committed page differs from what this script writes.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "configuration.md"
COMMAND = "python scripts/gen_config_doc.py"


def _classes() -> list[tuple[type[BaseSettings], str]]:
    from pipeline.config import Settings
    from pipeline.gateway.settings import GatewaySettings
    from pipeline.report.settings import ReportSettings

    return [
        (Settings, "Read by every command: the worker, the gateway, `sessions`, `tail`, `status`, "
                   "`produce`."),
        (GatewaySettings, "The gateway's own request limits (`sessionizer gateway`)."),
        (ReportSettings, "The Sessions report the gateway serves."),
    ]


_SECTION = re.compile(r"^\s*#\s*--\s*(?P<name>.+?)\s*-*\s*$")
_FIELD = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*)\s*:")
_CHOICES = re.compile(r"^\^(?:\(\?i\))?\((?P<alts>[^()]+)\)\$$")


def sections(cls: type[BaseSettings]) -> list[tuple[str, list[str]]]:
    """The class's fields grouped under its ``# -- name --`` comments, in declaration order."""
    names = set(cls.model_fields)
    groups: list[tuple[str, list[str]]] = [("", [])]
    seen: set[str] = set()
    for klass in reversed(cls.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseSettings)) or klass is BaseSettings:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for line in source.splitlines():
            header = _SECTION.match(line)
            if header:
                groups.append((header["name"], []))
                continue
            field = _FIELD.match(line)
            if field and field["name"] in names and field["name"] not in seen:
                seen.add(field["name"])
                groups[-1][1].append(field["name"])
    rest = [name for name in cls.model_fields if name not in seen]
    if rest:
        groups.append(("other", rest))
    return [(title, fields) for title, fields in groups if fields]


def env_name(cls: type[BaseSettings], name: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def _default(info: FieldInfo) -> str:
    if info.default_factory is not None:
        value: Any = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or value == "" or value == [] or value == {}:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def _bounds(info: FieldInfo) -> list[str]:
    out = []
    for item in info.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(item, attr, None)
            if value is not None:
                out.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
        min_length = getattr(item, "min_length", None)
        if min_length:
            out.append(f"at least {min_length} character{'s' if min_length > 1 else ''}")
    return out


def _pattern(info: FieldInfo) -> str | None:
    for item in info.metadata:
        pattern = getattr(item, "pattern", None)
        if pattern:
            return str(pattern)
    return None


def accepts(info: FieldInfo) -> str:
    """What values the field takes, from its type and constraints."""
    annotation = info.annotation
    origin = typing.get_origin(annotation)
    optional = False
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else annotation
        origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        text = "one of " + ", ".join(f"`{a}`" for a in typing.get_args(annotation))
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        text = "one of " + ", ".join(f"`{m.value}`" for m in annotation)
    elif annotation is bool:
        text = "`true` or `false`"
    elif annotation is SecretStr:
        text = "text (secret: never logged)"
    elif annotation in (int, float):
        text = "integer" if annotation is int else "number"
        bounds = _bounds(info)
        if bounds:
            text += ", " + ", ".join(bounds)
    elif annotation is str:
        choices = _CHOICES.match(_pattern(info) or "")
        if choices:
            text = "one of " + ", ".join(f"`{a}`" for a in choices["alts"].split("|"))
        else:
            text = "text"
            bounds = _bounds(info)
            if bounds:
                text += ", " + ", ".join(bounds)
    else:
        text = getattr(annotation, "__name__", str(annotation))
    return text + (", or empty" if optional else "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def missing_descriptions() -> list[str]:
    """Variables whose field has no ``description=`` (the page would say nothing of them)."""
    return [env_name(cls, name) for cls, _ in _classes()
            for name, info in cls.model_fields.items() if not (info.description or "").strip()]


def render() -> str:
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated by `{COMMAND}` from the settings classes; do not edit by hand. -->",
        "",
        "Every setting is an environment variable; there is no configuration file. Durations",
        "are seconds (a number: `0.25`, `300`), sizes are bytes unless the name says otherwise,",
        "booleans are `true` or `false`. A value that does not fit stops the command with one",
        "line naming the variable and what is wrong. The session rules also have per-project",
        "overrides (`SESSIONIZER_PROJECT_SETTINGS`). The variables the contract itself names are",
        "listed in [contract.md](contract.md#7-configuration-environment-variables).",
        "",
        "This page is generated from the settings' own descriptions: after changing a setting,",
        f"run `{COMMAND}` (a unit test fails while the page is out of date).",
    ]
    for cls, about in _classes():
        lines += ["", f"## {cls.__name__} (`{cls.__module__}`)", "", about]
        for title, names in sections(cls):
            if title:
                lines += ["", f"### {title[:1].upper()}{title[1:]}"]
            lines += ["", "| variable | default | accepts | meaning |", "| --- | --- | --- | --- |"]
            for name in names:
                info = cls.model_fields[name]
                lines.append(f"| `{env_name(cls, name)}` | {_cell(_default(info))} | "
                             f"{_cell(accepts(info))} | {_cell(info.description or '')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed page is current")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC.relative_to(REPO)} is out of date: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
