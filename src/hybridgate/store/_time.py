"""Times as the store keeps them (epoch seconds), parsed from what people type."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, date, datetime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# The times a stored value may take: what a date can show (1970-01-01 up to the end of year 9999, UTC).
# Past either end a value would be stored and then break every listing that renders it as a date.
EARLIEST = 0.0
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()


def check_time(ts: float, text: object) -> float:
    """`ts` when it is a finite time between 1970 and the end of 9999; ValueError naming `text` otherwise."""
    if not math.isfinite(ts):
        raise ValueError(f"'{text}' is not a finite time")
    if not EARLIEST <= ts <= LATEST:
        raise ValueError(
            f"'{text}' is out of range: a time must fall between 1970-01-01 and 9999-12-31 (UTC)"
        )
    return ts


def parse_time(text: str, *, now: float | None = None, future: bool = False) -> float:
    """Epoch seconds from an ISO date or datetime (UTC unless it says otherwise), epoch seconds, or a
    duration such as `7d`, `12h`, `30m` (before now, or after it when `future`). Raises ValueError, also
    for a time that is not finite or falls outside 1970 to 9999 (see `check_time`)."""
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    now = time.time() if now is None else now
    m = _RELATIVE.match(s)
    if m:
        delta = float(m.group(1)) * _UNIT_S[m.group(2)]
        return check_time(now + delta if future else now - delta, text)
    try:
        seconds: float | None = float(s)  # epoch seconds; "inf" and "nan" parse too: check_time refuses them
    except ValueError:
        seconds = None
    if seconds is not None:
        return check_time(seconds, text)
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            dt = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: use a date (2025-01-31), a datetime (2025-01-31T12:00:00Z), "
            "epoch seconds, or a duration (7d, 12h, 30m)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return check_time(dt.timestamp(), text)


__all__ = ["EARLIEST", "LATEST", "check_time", "parse_time"]
