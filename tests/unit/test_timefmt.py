"""Timestamps: RFC 3339 or epoch ms in, epoch ms inside, RFC 3339 UTC (ms) out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.core.timefmt import TimestampError, format_ms, parse_timestamp_ms

T0 = 1_764_237_600_000  # 2025-11-27T10:00:00.000Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2025-11-27T10:00:00Z", T0),
        ("2025-11-27T10:00:00+00:00", T0),
        ("2025-11-27T10:00:00-00:00", T0),
        ("2025-11-27T11:30:00+01:30", T0),
        ("2025-11-27T05:00:00-05:00", T0),
        ("2025-11-27t10:00:00Z", T0),
        ("2025-11-27 10:00:00Z", T0),
        ("2025-11-27T10:00:00.5Z", T0 + 500),
        ("2025-11-27T10:00:00.123Z", T0 + 123),
        ("2025-11-27T10:00:00.123999Z", T0 + 123),  # below a millisecond: cut
        ("  2025-11-27T10:00:00Z\n", T0),
        ("1970-01-01T00:00:00Z", 0),
        ("1969-12-31T23:59:59.999Z", -1),
        ("1969-12-31T23:59:59.9995Z", -1),  # cut toward the past, like after the epoch
    ],
)
def test_rfc3339_with_offset(text: str, ms: int) -> None:
    assert parse_timestamp_ms(text) == ms


def test_rfc3339_lower_case_z_and_t() -> None:
    # RFC 3339 section 5.6: 'T' and 'Z' may be lower case
    assert parse_timestamp_ms("2025-11-27T10:00:00z") == T0
    assert parse_timestamp_ms("2025-11-27t10:00:00Z") == T0


def test_integer_is_epoch_ms() -> None:
    assert parse_timestamp_ms(T0) == T0
    assert parse_timestamp_ms(0) == 0


def test_integral_float_is_epoch_ms() -> None:
    assert parse_timestamp_ms(float(T0)) == T0


@pytest.mark.parametrize(
    "value",
    [
        "2025-11-27T10:00:00",  # no offset
        "2025-11-27T10:00Z",  # no seconds
        "2025-11-27",
        "2025-11-27X10:00:00Z",
        "2025-13-27T10:00:00Z",
        "2025-11-27T10:00:00+24:00",
        "yesterday at noon",
        "",
        str(T0),  # epoch ms as a string
    ],
)
def test_not_rfc3339_is_refused(value: str) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp_ms(value)


@pytest.mark.parametrize("value", [True, False, 1.5, None, [T0], {"ms": T0}])
def test_other_types_are_refused(value: object) -> None:
    with pytest.raises(TimestampError):
        parse_timestamp_ms(value)


def test_error_says_what_to_do() -> None:
    with pytest.raises(TimestampError, match=r"add Z or \+hh:mm"):
        parse_timestamp_ms("2025-11-27T10:00:00.123")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (T0, "2025-11-27T10:00:00.000Z"),
        (T0 + 1, "2025-11-27T10:00:00.001Z"),
        (T0 - 1, "2025-11-27T09:59:59.999Z"),
        (0, "1970-01-01T00:00:00.000Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_format_is_utc_with_milliseconds(ms: int, text: str) -> None:
    assert format_ms(ms) == text


@given(st.integers(min_value=0, max_value=253_402_300_799_999))  # 1970 to 9999
def test_format_then_parse_is_identity(ms: int) -> None:
    assert parse_timestamp_ms(format_ms(ms)) == ms


_FIRST_MS = -62_135_596_800_000  # 0001-01-01T00:00:00.000Z
_LAST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


@example(-30_610_224_000_001)
@given(st.integers(min_value=_FIRST_MS, max_value=_LAST_MS))
def test_format_ms_is_datetimes_rendering(ms: int) -> None:
    seconds, millis = divmod(ms, 1000)
    # isoformat, not strftime's %Y, which leaves years before 1000 unpadded on glibc
    second = datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None).isoformat(timespec="seconds")
    expected = f"{second}.{millis:03d}Z"
    assert format_ms(ms) == expected


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (_FIRST_MS - 1, "+0000-12-31T23:59:59.999Z"),
        (_LAST_MS + 1, "+10000-01-01T00:00:00.000Z"),
        (10**20, "+3168875820-09-06T09:46:40.000Z"),
        (-(10**20), "-3168871881-04-27T14:13:20.000Z"),
    ],
)
def test_format_ms_outside_datetimes_years_writes_an_expanded_year(ms: int, text: str) -> None:
    assert format_ms(ms) == text


@example(-30_610_224_000_001)  # 999-12-31T23:59:59.999Z: a year before 1000, zero-padded
@example(-62_135_596_800_000)  # 0001-01-01T00:00:00.000Z
@given(st.integers())
def test_format_ms_never_raises_for_an_integer_and_parses_back(ms: int) -> None:
    text = format_ms(ms)
    assert text.endswith("Z")
    assert int(text[-4:-1]) == ms % 1000
    assert parse_timestamp_ms(text) == ms
