"""Times as the store keeps them (epoch seconds), parsed from what people type."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, *, now: float | None = None, future: bool = False) -> float:
    """Epoch seconds from an ISO date or datetime (UTC unless it says otherwise), epoch seconds, or a
    duration such as `7d`, `12h`, `30m` (before now, or after it when `future`). Raises ValueError."""
    s = text.strip()
    if not s:
        raise ValueError("empty time")
    now = time.time() if now is None else now
    m = _RELATIVE.match(s)
    if m:
        delta = float(m.group(1)) * _UNIT_S[m.group(2)]
        return now + delta if future else now - delta
    try:
        return float(s)
    except ValueError:
        pass
    try:
        if len(s) == 10:
            d = date.fromisoformat(s)
            return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"'{text}' is not a time: use a date (2025-01-31), a datetime (2025-01-31T12:00:00Z), "
            "epoch seconds, or a duration (7d, 12h, 30m)"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


__all__ = ["parse_time"]
