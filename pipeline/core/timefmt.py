"""Timestamps: RFC 3339 or epoch milliseconds in, integer epoch milliseconds inside,
RFC 3339 UTC with millisecond precision out."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class TimestampError(ValueError):
    """A timestamp is not RFC 3339 with an offset nor integer epoch milliseconds."""


def parse_timestamp_ms(value: object) -> int:
    """Parse an event timestamp into epoch milliseconds.

    Accepts an integer (epoch ms; ``bool`` is refused) or an RFC 3339 string
    that carries an offset (``Z`` or ``+hh:mm``).

    A string of the usual shape (an ASCII digit first, ``Z`` or an ASCII digit last,
    ``T`` at [10], 20 characters or more) needs none of the preparation below (nothing
    to strip, no lower-case ``t`` or ``z``): it goes to ``datetime.fromisoformat`` at
    once, and to the general code only when that fails or finds no offset.
    """
    if type(value) is str and len(value) >= 20 and value[10] == "T":
        first, last = value[0], value[-1]
        if "0" <= first <= "9" and (last == "Z" or "0" <= last <= "9"):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                pass
            else:
                if parsed.tzinfo is not None:
                    return _epoch_ms(parsed)
    return _parse_general(value)


def _epoch_ms(parsed: datetime) -> int:
    delta = parsed - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


#: The expanded-year form :func:`format_ms` writes outside the years 1-9999.
_EXPANDED = re.compile(r"([+-])(\d{4,})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z")


def _parse_general(value: object) -> int:
    """:func:`parse_timestamp_ms` for any value."""
    if isinstance(value, bool):
        raise TimestampError("a timestamp must be an RFC 3339 string or integer epoch ms, not a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        raise TimestampError(
            f"a timestamp must be an RFC 3339 string or integer epoch ms, not {type(value).__name__}"
        )
    text = value.strip()
    if text[:1] in ("+", "-"):
        expanded = _EXPANDED.fullmatch(text)
        if expanded is None:
            raise TimestampError(
                f"{value!r} is not an RFC 3339 date-time (e.g. 2026-11-27T10:00:00Z)"
            )
        return _expanded_ms(expanded)
    if len(text) < 20 or text[10] not in "Tt ":
        raise TimestampError(f"{value!r} is not an RFC 3339 date-time (e.g. 2026-11-27T10:00:00Z)")
    if text[-1] == "z":  # RFC 3339 allows a lower-case z (and t)
        text = text[:-1] + "Z"
    if text[10] == "t":
        text = text[:10] + "T" + text[11:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise TimestampError(
            f"{value!r} is not an RFC 3339 date-time (e.g. 2026-11-27T10:00:00Z)"
        ) from None
    if parsed.tzinfo is None:
        raise TimestampError(f"{value!r} has no UTC offset; add Z or +hh:mm")
    return _epoch_ms(parsed)


#: ``YYYY-MM-DD`` by days since the epoch, for :func:`format_ms` (bounded: cleared when full)
_DAYS: dict[int, str] = {}


#: Days since the epoch of 0001-01-01 and 9999-12-31, the dates ``datetime`` renders.
_FIRST_DAY = -719_162
_LAST_DAY = 2_932_896


def format_ms(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with millisecond precision.

    The date of each day is formatted once (a session's events share a few days),
    the time of day by arithmetic. Never raises for an integer: a date outside the
    years 1-9999, which RFC 3339 cannot write, comes out with an ISO 8601 expanded
    year (``+10000-01-01``, ``-0001-12-31``) rather than failing."""
    seconds, millis = divmod(ms, 1000)
    days, clock = divmod(seconds, 86_400)
    day = _DAYS.get(days)
    if day is None:
        if _FIRST_DAY <= days <= _LAST_DAY:
            # not strftime's %Y: the C library writes years before 1000 unpadded ("999-12-31")
            date = datetime.fromtimestamp(days * 86_400, UTC)
            day = f"{date.year:04d}-{date.month:02d}-{date.day:02d}"
        else:
            day = _expanded_date(days)
        if len(_DAYS) >= 4096:
            _DAYS.clear()
        _DAYS[days] = day
    hours, clock = divmod(clock, 3600)
    minutes, secs = divmod(clock, 60)
    return f"{day}T{hours:02d}:{minutes:02d}:{secs:02d}.{millis:03d}Z"


def _expanded_date(days: int) -> str:
    """Days since the epoch as an ISO 8601 date with an expanded, signed year
    (proleptic Gregorian calendar, astronomical year numbering: year 0 is 1 BC)."""
    z = days + 719_468  # days since 0000-03-01
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (1 if month <= 2 else 0)
    sign = "-" if year < 0 else "+"
    return f"{sign}{abs(year):04d}-{month:02d}-{day:02d}"


def _expanded_ms(match: re.Match[str]) -> int:
    """Epoch ms of an expanded-year date-time as :func:`format_ms` writes it."""
    sign, year_text, month_text, day_text, hh, mm, ss, millis = match.groups()
    year, month, day = int(year_text) * (-1 if sign == "-" else 1), int(month_text), int(day_text)
    if 1 <= year <= 9999 or not (1 <= month <= 12 and 1 <= day <= 31 and int(hh) < 24 and int(mm) < 60
            and int(ss) < 60):
        raise TimestampError(f"{match.string!r} is not a valid date-time")
    y = year - (1 if month <= 2 else 0)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146_097 + doe - 719_468
    return ((days * 86_400 + int(hh) * 3600 + int(mm) * 60 + int(ss)) * 1000) + int(millis)
