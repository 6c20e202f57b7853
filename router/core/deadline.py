"""`X-Deadline` parsing: every accepted spelling becomes an absolute Unix time, or None for "urgent"."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

from router.core.errors import InvalidDeadline

ACCEPTED_FORMS = (
    "accepted forms: a duration (90s, 30m, 2h, 1d, 1h30m), an ISO 8601 duration (PT2H, P1DT2H, PT90S), "
    "seconds (7200, 7200.5), an RFC 3339 time (2026-11-27T15:00:00Z, 2026-11-27T16:00:00+01:00), "
    "an HTTP-date (Fri, 27 Nov 2026 15:00:00 GMT), or now / 0 for urgent"
)

# Longer than any accepted spelling; keeps junk out of the regexes and out of the error message.
_MAX_LENGTH = 64

_NUM = r"(\d+(?:\.\d+)?)"
_DURATION_RE = re.compile(rf"(?:{_NUM}d)?\s*(?:{_NUM}h)?\s*(?:{_NUM}m)?\s*(?:{_NUM}s)?", re.ASCII)
_ISO_DURATION_RE = re.compile(rf"p(?:{_NUM}w)?(?:{_NUM}d)?(?:t(?=\d)(?:{_NUM}h)?(?:{_NUM}m)?(?:{_NUM}s)?)?", re.ASCII)
_SECONDS_RE = re.compile(_NUM, re.ASCII)  # ASCII: "٣" is a digit to Python, not to HTTP
_NEGATIVE_RE = re.compile(r"-\s*(?:\d|\.\d|p)", re.ASCII)
_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[t ](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?(z|[+-]\d{2}:\d{2})?",
    re.ASCII,
)
_HTTP_DATE_RE = re.compile(
    r"(?:mon|tue|wed|thu|fri|sat|sun), (\d{1,2}) "
    r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec) (\d{4}) (\d{2}):(\d{2}):(\d{2}) gmt",
    re.ASCII,
)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_UNIT_SECONDS = (604800.0, 86400.0, 3600.0, 60.0, 1.0)


def _fail(value: str, problem: str, code: str = "invalid_deadline") -> InvalidDeadline:
    shown = value if len(value) <= _MAX_LENGTH else value[:_MAX_LENGTH] + "..."
    return InvalidDeadline(f"X-Deadline {shown!r} {problem}; {ACCEPTED_FORMS}.", code=code)


def _sum_parts(parts: tuple[str | None, ...], units: tuple[float, ...]) -> float | None:
    if all(part is None for part in parts):
        return None
    return sum(float(part) * unit for part, unit in zip(parts, units, strict=True) if part is not None)


def _duration(text: str) -> float | None:
    """Seconds for a relative spelling (`1h30m`, `PT2H`, `7200`), or None when `text` is not one."""
    if match := _SECONDS_RE.fullmatch(text):
        return float(match.group(1))
    if match := _DURATION_RE.fullmatch(text):
        return _sum_parts(match.groups(), _UNIT_SECONDS[1:])
    if match := _ISO_DURATION_RE.fullmatch(text):
        return _sum_parts(match.groups(), _UNIT_SECONDS)
    return None


def _absolute(text: str) -> datetime | None:
    """The time an RFC 3339 time or HTTP-date names (naive without a zone), None if neither; ValueError if bad."""
    if match := _RFC3339_RE.fullmatch(text):
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        tz: timezone | None = None if offset is None else UTC
        if offset not in (None, "z"):
            sign = -1 if offset[0] == "-" else 1
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        micro = int((fraction or ".0")[1:].ljust(6, "0")[:6])
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, tzinfo=tz)
    if match := _HTTP_DATE_RE.fullmatch(text):
        day, month, year, hour, minute, second = match.groups()
        return datetime(int(year), _MONTHS.index(month) + 1, int(day), int(hour), int(minute), int(second), tzinfo=UTC)
    return None


def parse_duration(value: str) -> float:
    """Seconds in a relative spelling (`90s`, `1h30m`, `PT2H`, `7200`); InvalidDeadline for anything else."""
    text = value.strip().lower()
    seconds = _duration(text) if len(text) <= _MAX_LENGTH else None
    if seconds is None:
        raise _fail(value, "is not a duration")
    if not math.isfinite(seconds):
        raise _fail(value, "is not a finite duration")
    return seconds


def parse_deadline(value: str, *, now: float, max_seconds: float) -> float | None:
    """The absolute deadline (Unix seconds) `value` names, None for urgent; InvalidDeadline says what is wrong."""
    text = value.strip().lower()
    if len(text) > _MAX_LENGTH:
        raise _fail(value, "is too long")
    if text == "now":
        return None
    if text in ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"):
        raise _fail(value, "is not a finite number")
    if _NEGATIVE_RE.match(text):
        raise _fail(value, "is negative")
    seconds = _duration(text)
    if seconds is not None:
        if seconds == 0:
            return None
        deadline = now + seconds
    else:
        try:
            instant = _absolute(text)
        except ValueError as exc:
            raise _fail(value, f"is not a valid date or time ({exc})") from exc
        if instant is None:
            raise _fail(value, "is not a deadline")
        if instant.tzinfo is None:
            raise _fail(value, "has no time zone (add Z or an offset such as +01:00)")
        deadline = instant.timestamp()
        if deadline <= now:
            raise _fail(value, f"is in the past (now is {format_deadline(now)})", code="deadline_in_past")
    if not math.isfinite(deadline) or deadline - now > max_seconds:
        raise _fail(value, f"is more than {max_seconds:g} seconds away", code="deadline_too_far")
    return deadline


def format_deadline(ts: float) -> str:
    """`ts` as an RFC 3339 UTC time with whole seconds, e.g. `2026-11-27T15:00:00Z`."""
    return datetime.fromtimestamp(math.floor(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
