"""API keys and the report token: checked at start, held as secrets, generated for demos.

A key is refused (:class:`~pipeline.exceptions.ConfigError`, one line that names
the variable and never the key) when it is shorter than :data:`MIN_KEY_CHARS`
characters, has fewer than :data:`MIN_DISTINCT_CHARS` different characters, or
contains a known placeholder word (``replace-me``, ``change-me``, ``demo``,
``test``, ``example``, ...). :func:`generate_key` makes one that passes.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from pipeline.exceptions import ConfigError

__all__ = [
    "MIN_KEY_CHARS", "PLACEHOLDERS", "check_secret", "ensure_key_file", "generate_key", "weakness",
]

MIN_KEY_CHARS = 16
MIN_DISTINCT_CHARS = 8

#: words that mark a key copied from an example rather than generated
PLACEHOLDERS = (
    "replace-me", "replaceme", "replace_me", "change-me", "changeme", "change_me", "changeit",
    "demo", "test", "example", "sample", "placeholder", "dummy", "default", "secret",
    "password", "your-key", "yourkey", "your_key", "xxxx", "todo", "fixme", "1234567890123456",
)

_HOW = "generate one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))'"


def weakness(value: str) -> str | None:
    """Why ``value`` is not acceptable as a key or token, or None when it is."""
    if len(value) < MIN_KEY_CHARS:
        return f"is {len(value)} characters long; at least {MIN_KEY_CHARS} are needed"
    lowered = value.lower()
    for word in PLACEHOLDERS:
        if word in lowered:
            return f"contains the placeholder {word!r}"
    if len(set(value)) < MIN_DISTINCT_CHARS:
        return f"has fewer than {MIN_DISTINCT_CHARS} different characters"
    return None


def check_secret(variable: str, value: str, what: str = "the key") -> None:
    """Raise :class:`ConfigError` naming ``variable`` (not the value) when ``value`` is weak."""
    problem = weakness(value)
    if problem is not None:
        raise ConfigError(f"{variable}: {what} {problem}; {_HOW}")


def generate_key() -> str:
    """A random key that :func:`weakness` accepts (32 URL-safe characters)."""
    while True:
        key = secrets.token_urlsafe(24)
        if weakness(key) is None:
            return key


def ensure_key_file(path: str | os.PathLike[str], project: str) -> tuple[str, bool]:
    """The first key in ``path`` (``key:project`` pairs, the format of
    ``SESSIONIZER_API_KEYS``), and whether it was made now: a missing file is
    created with a new key for ``project``, readable by its owner only."""
    file = Path(path)
    if file.exists():
        first = file.read_text().strip().split(",")[0]
        return first.partition(":")[0], False
    file.parent.mkdir(parents=True, exist_ok=True)
    key = generate_key()
    descriptor = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(f"{key}:{project}\n")
    return key, True
