"""Query parameters of the report's JSON API: parsed and checked, or a :class:`ParamError`
saying which parameter is wrong and what it accepts. Pure: no aiohttp here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.core.timefmt import TimestampError, parse_timestamp_ms
from pipeline.exceptions import ParamError

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 10_000
DEFAULT_STATS_RANGE_MS = 24 * 3_600_000
_MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
_SESSION_ID = re.compile(r"[A-Za-z0-9-]{1,128}")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class ListQuery:
    """``GET /api/sessions``: sessions that started in ``[since_ms, until_ms]``."""

    project: str | None = None
    user: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    active_only: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0


@dataclass(frozen=True, slots=True)
class StatsQuery:
    """``GET /api/sessions/stats``: sessions that started in ``[since_ms, until_ms]``."""

    since_ms: int
    until_ms: int
    project: str | None = None


def _single(pairs: Iterable[tuple[str, str]], known: tuple[str, ...]) -> dict[str, str]:
    """The parameters given once each; empty values count as not given."""
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in known:
            raise ParamError(name, f"unknown parameter; this endpoint takes {', '.join(known)}")
        if name in values:
            raise ParamError(name, "given more than once")
        values[name] = value.strip()
    return {name: value for name, value in values.items() if value}


def _text(values: dict[str, str], name: str, max_len: int) -> str | None:
    value = values.get(name)
    if value is not None and len(value) > max_len:
        raise ParamError(name, f"at most {max_len} characters")
    return value


def parse_time_ms(name: str, text: str) -> int:
    """Epoch milliseconds, or an RFC 3339 date-time with an offset."""
    if text.isdigit():
        value = int(text)
    else:
        try:
            value = parse_timestamp_ms(text)
        except TimestampError as exc:
            raise ParamError(name, f"{exc} (or give epoch milliseconds)") from None
    if not 0 <= value <= _MAX_TIME_MS:
        raise ParamError(name, f"{text!r} is out of range (years 1970 to 9999)")
    return value


def _range(values: dict[str, str]) -> tuple[int | None, int | None]:
    since = parse_time_ms("since", values["since"]) if "since" in values else None
    until = parse_time_ms("until", values["until"]) if "until" in values else None
    if since is not None and until is not None and since > until:
        raise ParamError("since", "is after until; give since <= until")
    return since, until


def _bool(values: dict[str, str], name: str) -> bool:
    value = values.get(name)
    if value is None:
        return False
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ParamError(name, f"{value!r} is not a boolean; give true or false")


def _limit(values: dict[str, str]) -> int:
    text = values.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise ParamError("limit", f"{text!r} is not a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _offset(values: dict[str, str]) -> int:
    text = values.get("offset")
    if text is None:
        return 0
    if not text.isdigit() or int(text) > MAX_OFFSET:
        raise ParamError("offset", f"{text!r} is not a whole number from 0 to {MAX_OFFSET}")
    return int(text)


def parse_list_query(pairs: Iterable[tuple[str, str]]) -> ListQuery:
    values = _single(pairs, ("project", "user", "since", "until", "active", "limit", "offset"))
    since, until = _range(values)
    return ListQuery(
        project=_text(values, "project", 100),
        user=_text(values, "user", 256),
        since_ms=since,
        until_ms=until,
        active_only=_bool(values, "active"),
        limit=_limit(values),
        offset=_offset(values),
    )


def parse_session_query(pairs: Iterable[tuple[str, str]]) -> str | None:
    """``GET /api/sessions/{id}``: the project, if given (a session id is unique within
    its project only)."""
    return _text(_single(pairs, ("project",)), "project", 100)


def parse_stats_query(pairs: Iterable[tuple[str, str]], now_ms: int) -> StatsQuery:
    """Defaults: ``until`` now, ``since`` 24 hours before ``until``."""
    values = _single(pairs, ("project", "since", "until"))
    since, until = _range(values)
    if until is None:
        if since is not None and since >= now_ms:
            raise ParamError("since", "is not before now (the default of until); give until too")
        until = now_ms
    if since is None:
        since = max(0, until - DEFAULT_STATS_RANGE_MS)
    if since == until:
        raise ParamError("until", "equals since; give a time range longer than 0 ms")
    return StatsQuery(since_ms=since, until_ms=until, project=_text(values, "project", 100))


def parse_session_id(text: str) -> str:
    if not _SESSION_ID.fullmatch(text):
        raise ParamError(
            "session_id", f"{text[:140]!r} is not a session id (1-128 of A-Z, a-z, 0-9 and -)"
        )
    return text
