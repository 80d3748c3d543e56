"""A Python exception as an Exceptionless-style ``data["@error"]`` object."""

from __future__ import annotations

import traceback
from typing import Any

MAX_INNER_DEPTH = 5
MAX_FRAMES = 100


def type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Name`` otherwise."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def error_info(exc: BaseException, *, _depth: int = 0) -> dict[str, Any]:
    """``{type, message, stack_trace: [{name, file_name, line_number}], inner}``.

    ``inner`` is the cause (``raise ... from``) or the exception being handled
    when this one was raised, as Exceptionless nests inner errors.
    """
    frames = traceback.extract_tb(exc.__traceback__)[-MAX_FRAMES:]
    info: dict[str, Any] = {
        "type": type_name(exc),
        "message": str(exc),
        "stack_trace": [
            {"name": frame.name, "file_name": frame.filename, "line_number": frame.lineno or 0}
            for frame in reversed(frames)
        ],
    }
    inner = exc.__cause__
    if inner is None and not exc.__suppress_context__:
        inner = exc.__context__
    if inner is not None and _depth < MAX_INNER_DEPTH:
        info["inner"] = error_info(inner, _depth=_depth + 1)
    return info
