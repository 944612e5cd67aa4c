"""Duration parsing and formatting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jitgate.domain.durations import format_duration, parse_duration
from jitgate.errors import InvalidInput


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h", 3600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("600", 600),
        (45, 45),
        ("1h0m5s", 3605),
        (" 10m ", 600),
    ],
)
def test_parse(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0",
        "0s",
        "-5",
        "-5m",
        "5x",
        "m",
        "1m1h",
        "1h1h",
        "1.5h",
        "15 m",
        "1e3",
        "367d",
        "99999999999999999999h",
        "1" * 30,
        10**30,
        "\u00b2",
        "\u0661m",
        True,
    ],
)
def test_refused(text: str | int) -> None:
    with pytest.raises(InvalidInput, match="duration"):
        parse_duration(text)


@given(st.integers(min_value=1, max_value=366 * 86400))
def test_format_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value
