"""Durations as people write them: ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d`` or plain seconds.

Parsing is strict: an empty string, a zero or negative value, unknown units, repeated
or out-of-order units are refused with a message that quotes the input.
"""

from __future__ import annotations

import re
from datetime import timedelta

from jitgate.errors import InvalidInput

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_SECONDS = re.compile(r"[0-9]{1,12}")
MAX_DURATION = timedelta(days=366)


def parse_duration(value: str | int | timedelta) -> timedelta:
    """Parse a duration; raise :class:`InvalidInput` naming the input when it is not one."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"invalid duration {value!r}")
    elif isinstance(value, int):
        seconds = value
    else:
        text = value.strip()
        if _SECONDS.fullmatch(text):
            seconds = int(text)
        elif text and (match := _DURATION.fullmatch(text)):
            seconds = sum(
                int(part) * unit
                for part, unit in zip(match.groups(), _UNIT_SECONDS.values(), strict=True)
                if part
            )
        else:
            raise InvalidInput(
                f"invalid duration {value!r}: use forms like 90s, 15m, 1h, 1h30m or seconds"
            )
    if seconds <= 0:
        raise InvalidInput(f"invalid duration {value!r}: must be positive")
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidInput(f"invalid duration {value!r}: longer than {MAX_DURATION.days} days")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest canonical spelling: ``1h30m``, ``15m``, ``90s`` -> ``1m30s``."""
    seconds = int(value.total_seconds())
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
