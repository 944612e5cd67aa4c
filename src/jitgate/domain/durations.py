"""Durations as people write them: ``90s``, ``15m``, ``1h``, ``1h30m``, ``2d`` or plain seconds.

Parsing is strict: an empty string, a zero or negative value, unknown units, repeated
or out-of-order units are refused with a message that quotes the input.
"""

from __future__ import annotations

import re
from datetime import timedelta

from jitgate.errors import InvalidInput

_UNIT_SECONDS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
MAX_DURATION = timedelta(days=366)


def parse_duration(value: str | int | timedelta) -> timedelta:
    """Parse a duration; raise :class:`InvalidInput` naming the input when it is not one."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise InvalidInput(f"invalid duration {value!r}")
    elif isinstance(value, int):
        result = timedelta(seconds=value)
    else:
        text = value.strip()
        if text.isdigit():
            result = timedelta(seconds=int(text))
        else:
            match = _DURATION.fullmatch(text)
            if not text or match is None:
                raise InvalidInput(
                    f"invalid duration {value!r}: use forms like 90s, 15m, 1h, 1h30m or seconds"
                )
            seconds = sum(
                int(part) * unit
                for part, unit in zip(match.groups(), _UNIT_SECONDS.values(), strict=True)
                if part
            )
            result = timedelta(seconds=seconds)
    if result <= timedelta(0):
        raise InvalidInput(f"invalid duration {value!r}: must be positive")
    if result > MAX_DURATION:
        raise InvalidInput(f"invalid duration {value!r}: longer than {MAX_DURATION.days} days")
    return result


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
