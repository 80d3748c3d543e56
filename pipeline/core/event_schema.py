"""The event schema, compiled: the validator that gives the verdict and its message,
and a quick check derived from the same schema.

``event.schema.json`` is read from the package's ``schemas`` folder (package data,
found with :mod:`importlib.resources`, so an installed wheel has it), or from the
folder named by ``SESSIONIZER_SCHEMA_DIR``. :meth:`EventSchema.load` reads and
compiles it; whoever parses events owns the result (nothing is cached here), so a
reload is a new :class:`EventSchema`.

The schema's ``anyOf`` (``user_id`` or ``session_id``) is left out: the parser checks
identity first, with its own code (``no_identity``).

The quick check (:meth:`EventSchema.quick_check`) is generated from the schema's
``properties`` and ``required``: exact type tests (as orjson decodes JSON), string
lengths and patterns. It only ever says yes for an object the compiled validator
accepts, and then hands back the fields asked for, each read once; on no (None), the
compiled validator decides and words the error. A schema using any keyword the
generator does not know gets no quick check and every event goes to the compiled
validator. tests/unit/test_event_schema.py
checks the quick check against the validator on instances generated from the schema.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import fastjsonschema
import orjson

__all__ = ["EVENT_SCHEMA_FILE", "SCHEMA_DIR_ENV", "EventSchema", "derive_check", "schema_dir"]

#: Environment variable naming the folder that holds the JSON schemas.
SCHEMA_DIR_ENV: Final = "SESSIONIZER_SCHEMA_DIR"
EVENT_SCHEMA_FILE: Final = "event.schema.json"

Validator = Callable[..., Any]
Check = Callable[[dict[str, Any]], tuple[Any, ...] | None]

#: Keywords that never constrain (annotations), at any level.
_ANNOTATIONS: Final = frozenset({"title", "description", "$comment", "examples", "default"})
#: Top-level keywords the quick check understands (besides annotations).
_TOP_KEYWORDS: Final = frozenset(
    {"$schema", "$id", "type", "required", "properties", "additionalProperties"}
)
#: Keywords of a property's schema the quick check understands (besides annotations).
_PROPERTY_KEYWORDS: Final = frozenset({"type", "minLength", "maxLength", "pattern"})
#: A JSON type to an exact test of the value ``{v}`` as orjson decodes it.
_TYPE_TESTS: Final = {
    "string": "type({v}) is str",
    "integer": "type({v}) is int",
    "number": "(type({v}) is int or type({v}) is float)",
    "boolean": "type({v}) is bool",
    "object": "type({v}) is dict",
    "array": "type({v}) is list",
    "null": "{v} is None",
}
#: An unescaped ``$``: the compiled validator reads it as ``\Z`` (end of text only).
_DOLLAR: Final = re.compile(r"(?<!\\)\$")


def schema_dir() -> Path:
    """The folder holding the JSON schemas: ``$SESSIONIZER_SCHEMA_DIR``, else the
    package's own ``pipeline/schemas`` (package data)."""
    override = os.environ.get(SCHEMA_DIR_ENV)
    if override:
        return Path(override)
    return Path(str(importlib.resources.files("pipeline") / "schemas"))


class EventSchema:
    """The event schema (without its identity ``anyOf``), compiled.

    ``validate(obj, name_prefix="event")`` raises
    :class:`fastjsonschema.JsonSchemaValueException` for an object the schema refuses;
    :meth:`quick_check` gives the check derived from it (see the module's docstring).
    ``quick=False`` leaves the quick check out: every object goes to ``validate``.
    """

    __slots__ = ("definition", "quick", "validate")

    def __init__(self, definition: Mapping[str, Any], *, quick: bool = True) -> None:
        definition = {k: v for k, v in definition.items() if k != "anyOf"}
        self.definition: Final = definition
        self.validate: Final[Validator] = fastjsonschema.compile(definition, use_default=False)
        self.quick: Final = quick

    def quick_check(self, fields: Sequence[str] = ()) -> Check | None:
        """:func:`derive_check` of this schema (None when ``quick`` is off): a function
        giving the values of ``fields`` for an object the schema accepts, else None."""
        return derive_check(self.definition, fields) if self.quick else None

    @classmethod
    def load(cls, directory: Path | None = None, *, quick: bool = True) -> EventSchema:
        """Read and compile ``event.schema.json`` from ``directory`` (default:
        :func:`schema_dir`). A missing file is a :class:`FileNotFoundError` saying
        what to set; a broken one raises what reading or compiling it raised."""
        path = (schema_dir() if directory is None else directory) / EVENT_SCHEMA_FILE
        try:
            definition = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"event schema not found at {path}; set {SCHEMA_DIR_ENV} to the folder "
                f"that holds {EVENT_SCHEMA_FILE}, or unset it to use the one installed "
                "with the package"
            ) from None
        if type(definition) is not dict:
            raise ValueError(
                f"{path} holds a JSON {type(definition).__name__}, not a schema object"
            )
        return cls(definition, quick=quick)


def derive_check(definition: Mapping[str, Any], fields: Sequence[str] = ()) -> Check | None:
    """A function of a decoded JSON object that returns the values of ``fields`` (as
    ``obj.get`` gives them, in that order) when ``definition`` accepts the object, and
    None otherwise (or when unsure); None instead of a function when ``definition``
    uses something this generator does not translate."""
    if not set(definition) <= _TOP_KEYWORDS | _ANNOTATIONS:
        return None
    if definition.get("type", "object") != "object":
        return None
    if definition.get("additionalProperties", True) is not True:
        return None
    required = definition.get("required", [])
    properties = definition.get("properties", {})
    if type(required) is not list or not all(type(name) is str for name in required):
        return None
    if type(properties) is not dict:
        return None
    namespace: dict[str, Any] = {}
    local: dict[str, str] = {}
    lines = ["def accepts(obj):", "    get = obj.get"]
    for name, schema in properties.items():
        v = local[name] = f"v{len(local)}"
        test = _property_test(schema, v, namespace)
        if test is None:
            return None
        types = _types(schema)
        lines.append(f"    {v} = get({name!r})")
        if types is not None and "null" not in types:
            # a field given as null is not absent: only an absent one may be skipped
            if name in required:
                lines.append(f"    if {v} is None: return None")
            else:
                lines.append(f"    if {v} is None:\n        if {name!r} in obj: return None")
            lines.append(f"    elif not ({test}): return None")
        else:
            if name in required:
                lines.append(f"    if {name!r} not in obj: return None")
            lines.append(f"    if not ({test}): return None")
    for name in required:
        if name not in properties:
            lines.append(f"    if {name!r} not in obj: return None")
    values = "".join(f"{local[name]}, " if name in local else f"get({name!r}), " for name in fields)
    lines.append(f"    return ({values})")
    # the source is built above from the schema's property names (as repr) and numbers
    exec("\n".join(lines), namespace)
    check: Check = namespace["accepts"]
    return check


def _types(schema: object) -> list[str] | None:
    if type(schema) is not dict or "type" not in schema:
        return None
    kind = schema["type"]
    return [kind] if type(kind) is str else kind


def _property_test(schema: object, v: str, namespace: dict[str, Any]) -> str | None:
    """The test of one property's value (the local variable ``v``) as Python source,
    or None when the property's schema is beyond the generator."""
    if schema is True:
        return "True"
    if type(schema) is not dict or not set(schema) <= _PROPERTY_KEYWORDS | _ANNOTATIONS:
        return None
    types = _types(schema)
    if types is None:
        return None if set(schema) & _PROPERTY_KEYWORDS else "True"
    if type(types) is not list or not types or not all(t in _TYPE_TESTS for t in types):
        return None
    string: list[str] = []
    for keyword, op in (("minLength", ">="), ("maxLength", "<=")):
        if keyword in schema:
            bound = schema[keyword]
            if type(bound) is not int or bound < 0:
                return None
            string.append(f"len({v}) {op} {bound}")
    if "pattern" in schema:
        pattern = schema["pattern"]
        if type(pattern) is not str:
            return None
        try:
            namespace[f"_pattern_{v}"] = re.compile(_DOLLAR.sub(r"\\Z", pattern))
        except re.error:
            return None
        string.append(f"_pattern_{v}.search({v}) is not None")
    alternatives = []
    for kind in types:
        test = _TYPE_TESTS[kind].format(v=v)
        if kind == "string" and string:
            test = "(" + " and ".join([test, *string]) + ")"
        alternatives.append(test)
    return " or ".join(alternatives)
