"""parse_timestamp_ms's quick path for the usual RFC 3339 shapes gives exactly what
its general code gives (value or error, with the same message)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.core import timefmt
from pipeline.core.timefmt import parse_timestamp_ms


def outcome(func: Any, value: object) -> tuple[str, object]:
    try:
        return ("ok", func(value))
    except Exception as exc:  # the same exception, with the same message
        return (type(exc).__name__, str(exc))


@st.composite
def near_rfc3339(draw: st.DrawFn) -> str:
    """Strings shaped like RFC 3339 date-times, right or slightly wrong."""
    year = draw(
        st.sampled_from(
            [
                "2025",
                "1970",
                "1969",
                "0001",
                "9999",
                "0000",
                "\u0662\u0660\u0662\u0665",
                "20250",
                "25",
            ]
        )
    )
    month = draw(st.sampled_from(["01", "02", "11", "12", "00", "13", "1", "\u0661\u0661"]))
    day = draw(st.sampled_from(["01", "27", "28", "29", "30", "31", "00", "32"]))
    sep = draw(st.sampled_from(["T", "t", " ", "_", "TT"]))
    hour = draw(st.sampled_from(["00", "09", "23", "24", "9"]))
    minute = draw(st.sampled_from(["00", "59", "60"]))
    second = draw(st.sampled_from([":00", ":59", ":60", "", ":5"]))
    fraction = draw(
        st.sampled_from(["", ".", ".5", ".123", ".1234", ".123456", ".1234567", ".12a"])
    )
    zone = draw(
        st.sampled_from(
            [
                "Z",
                "z",
                "",
                "+00:00",
                "-00:00",
                "+05:30",
                "-04:00",
                "+23:59",
                "-23:59",
                "+24:00",
                "+05:60",
                "+0530",
                "+05",
                "+05:30:15",
                "+05:30:15.5",
                "+\u0660\u0665:\u0663\u0660",
                "Z0",
            ]
        )
    )
    before = draw(st.sampled_from(["", "", " ", "\n", "\u3000"]))
    after = draw(st.sampled_from(["", "", " ", "\n", "\u3000"]))
    return f"{before}{year}-{month}-{day}{sep}{hour}:{minute}{second}{fraction}{zone}{after}"


@settings(max_examples=3000, deadline=None)
@given(near_rfc3339() | st.text(max_size=30) | st.floats() | st.integers() | st.none())
@example("2025-11-27T09:59:59.250Z")
@example("2025-11-27T11:59:30+02:00")
@example("1969-12-31T23:59:59.9995Z")
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59.999-23:59")
def test_string_time_shortcut_agrees_with_parse_timestamp_ms(value: object) -> None:
    assert outcome(parse_timestamp_ms, value) == outcome(timefmt._parse_general, value)


@pytest.mark.parametrize(
    "text",
    ["2025-11-27T09:59:59.250Z", "2025-11-27T05:59:59.250-04:00", "2025-11-27T09:59:59Z"],
)
def test_string_time_shortcut_is_taken_for_the_usual_shapes(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def general(value: object) -> int:
        raise AssertionError(f"{value!r} went to the general code")

    expected = timefmt._parse_general(text)
    monkeypatch.setattr(timefmt, "_parse_general", general)
    assert parse_timestamp_ms(text) == expected
