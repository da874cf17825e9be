"""Prometheus durations (``30s``, ``1h30m``) and points in time (RFC 3339, unix seconds, ``now-6h``)."""

from __future__ import annotations

import datetime as dt
import math
import re
import time

from service.errors import InvalidInputError

#: Units of a Prometheus duration, in seconds (https://prometheus.io/docs/prometheus/latest/querying/basics/).
_UNITS = {"y": 365 * 86400.0, "w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"^(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?(?:(\d+)ms)?$")
_ORDER = ("y", "w", "d", "h", "m", "s", "ms")


def parse_duration(text: str, what: str = "duration") -> float:
    """Seconds in a Prometheus duration (``30s``, ``5m``, ``1h30m``, ``250ms``) or a plain number of seconds.

    Raises :class:`InvalidInputError` naming ``what`` for anything else, zero or negative values included.
    """
    raw = str(text).strip()
    seconds: float | None = None
    try:
        seconds = float(raw)
    except ValueError:
        match = _DURATION.match(raw)
        if raw and match:
            seconds = sum(int(v) * _UNITS[u] for u, v in zip(_ORDER, match.groups(), strict=True) if v)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidInputError(
            f"{what}: {text!r} is not a positive duration; use a Prometheus duration such as 30s, 5m, "
            "1h30m, 250ms, or a number of seconds"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus duration for ``seconds`` (``90`` -> ``1m30s``); fractions as ``ms``."""
    ms = round(seconds * 1000)
    parts = []
    for unit in _ORDER:
        size = round(_UNITS[unit] * 1000)
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts) or "0s"


def parse_time(text: str, what: str = "time", *, now: float | None = None) -> float:
    """Unix seconds from RFC 3339 (``2026-12-07T01:00:00Z``), unix seconds, ``now`` or ``now-DURATION``."""
    raw = str(text).strip()
    current = time.time() if now is None else now
    if raw == "now":
        return current
    if raw.startswith("now-"):
        return current - parse_duration(raw[4:], what)
    try:
        value = float(raw)
    except ValueError:
        value = _rfc3339(raw, what)
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"{what}: {text!r} is not a time after 1970")
    return value


def _rfc3339(raw: str, what: str) -> float:
    try:
        parsed = dt.datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in raw.upper():
        raise InvalidInputError(
            f"{what}: {raw!r} is not a time; use RFC 3339 with a zone (2026-12-07T01:00:00Z), "
            "unix seconds, 'now' or 'now-6h'"
        )
    return parsed.timestamp()
