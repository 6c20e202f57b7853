"""X-Deadline parsing: table tests for every accepted form and every refusal, plus round-trip properties."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.core.deadline import ACCEPTED_FORMS, format_deadline, parse_deadline, parse_duration
from router.core.errors import InvalidDeadline

NOW = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC).timestamp()
WEEK = 7 * 86400.0


def parse(value: str, max_seconds: float = WEEK) -> float | None:
    return parse_deadline(value, now=NOW, max_seconds=max_seconds)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90),
        ("30m", 1800),
        ("2h", 7200),
        ("1d", 86400),
        ("1h30m", 5400),
        ("1d2h3m4s", 93784),
        ("1h 30m", 5400),
        ("1.5h", 5400),
        ("PT2H", 7200),
        ("P1DT2H", 93600),
        ("PT90S", 90),
        ("PT1H30M", 5400),
        ("P1W", WEEK),
        ("P2D", 172800),
        ("7200", 7200),
        ("7200.5", 7200.5),
        ("  2H ", 7200),
        ("pt2h", 7200),
    ],
)
def test_relative_forms(value: str, seconds: float) -> None:
    assert parse(value) == NOW + seconds


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-27T15:00:00Z",
        "2026-11-27t15:00:00z",
        "2026-11-27 15:00:00Z",
        "2026-11-27T16:00:00+01:00",
        "2026-11-27T10:00:00-05:00",
        "2026-11-27T15:00:00.000Z",
        "Fri, 27 Nov 2026 15:00:00 GMT",
        "fri, 27 nov 2026 15:00:00 gmt",
    ],
)
def test_absolute_forms(value: str) -> None:
    assert parse(value) == NOW + 3 * 3600


def test_fractional_rfc3339() -> None:
    assert parse("2026-11-27T15:00:00.25Z") == NOW + 3 * 3600 + 0.25


@pytest.mark.parametrize("value", ["now", "NOW", " Now ", "0", "0.0", "0s", "PT0S"])
def test_urgent(value: str) -> None:
    assert parse(value) is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is not a deadline"),
        ("soon", "is not a deadline"),
        ("2 hours", "is not a deadline"),
        ("1y", "is not a deadline"),
        ("P1M", "is not a deadline"),
        ("PT", "is not a deadline"),
        ("P", "is not a deadline"),
        ("h", "is not a deadline"),
        ("1e3", "is not a deadline"),
        ("\u0663h", "is not a deadline"),
        ("\u0663", "is not a deadline"),
        ("-5", "is negative"),
        ("-1h", "is negative"),
        ("-PT2H", "is negative"),
        ("nan", "is not a finite number"),
        ("-inf", "is not a finite number"),
        ("Infinity", "is not a finite number"),
        ("2026-11-27T15:00:00", "has no time zone"),
        ("2026-13-27T15:00:00Z", "is not a valid date or time"),
        ("2026-11-27T15:00:00+24:00", "is not a valid date or time"),
        ("Mon, 31 Feb 2026 15:00:00 GMT", "is not a valid date or time"),
        ("2026-11-27T11:00:00Z", "is in the past"),
        ("Fri, 27 Nov 2026 11:59:59 GMT", "is in the past"),
        ("8d", "seconds away"),
        ("2026-12-27T15:00:00Z", "seconds away"),
        ("9" * 60, "seconds away"),
        ("1" * 100, "is too long"),
    ],
)
def test_refusals(value: str, problem: str) -> None:
    with pytest.raises(InvalidDeadline) as info:
        parse(value)
    assert problem in info.value.message
    assert ACCEPTED_FORMS in info.value.message
    assert info.value.param == "X-Deadline"
    assert info.value.status == 400


def test_refusal_codes() -> None:
    with pytest.raises(InvalidDeadline) as past:
        parse("2020-01-01T00:00:00Z")
    with pytest.raises(InvalidDeadline) as far:
        parse("2h", max_seconds=3600)
    with pytest.raises(InvalidDeadline) as junk:
        parse("tomorrow")
    codes = (past.value.code, far.value.code, junk.value.code)
    assert codes == ("deadline_in_past", "deadline_too_far", "invalid_deadline")


def test_maximum_is_inclusive() -> None:
    assert parse("1h", max_seconds=3600) == NOW + 3600


def test_format_deadline() -> None:
    assert format_deadline(NOW) == "2026-11-27T12:00:00Z"
    assert format_deadline(NOW + 0.999) == "2026-11-27T12:00:00Z"


@pytest.mark.parametrize(("value", "seconds"), [("6h", 21600), ("PT90S", 90), ("7200", 7200), ("1h30m", 5400)])
def test_parse_duration(value: str, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["now", "2026-11-27T15:00:00Z", "-1h", "soon", "9" * 400])
def test_parse_duration_refuses(value: str) -> None:
    with pytest.raises(InvalidDeadline):
        parse_duration(value)


parts = st.integers(min_value=0, max_value=40)


@given(days=st.integers(0, 5), hours=parts, minutes=parts, seconds=parts, iso=st.booleans())
def test_generated_duration_round_trips(days: int, hours: int, minutes: int, seconds: int, iso: bool) -> None:
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if iso:
        text = f"P{days}DT{hours}H{minutes}M{seconds}S"
    else:
        text = "".join(f"{n}{unit}" for n, unit in zip((days, hours, minutes, seconds), "dhms", strict=True) if n)
        text = text or "0s"
    assert parse(text) == (NOW + total if total else None)


@given(offset=st.integers(min_value=1, max_value=int(WEEK)))
def test_formatted_time_round_trips(offset: int) -> None:
    assert parse(format_deadline(NOW + offset)) == NOW + offset


@given(offset=st.floats(min_value=1, max_value=WEEK - 1))
def test_formatted_float_time_parses_to_whole_second(offset: float) -> None:
    result = parse(format_deadline(NOW + offset + 1))
    assert result is not None
    assert NOW + offset <= result <= NOW + offset + 1


@given(junk=st.text(max_size=80))
def test_junk_only_raises_invalid_deadline(junk: str) -> None:
    try:
        result = parse(junk)
    except InvalidDeadline as exc:
        assert ACCEPTED_FORMS in exc.message
    else:
        assert result is None or NOW < result <= NOW + WEEK


@given(junk=st.from_regex(r"[-+ ]?[0-9pPtTdDhHmMsSwW:.,zZ ]{0,20}", fullmatch=True))
def test_near_miss_junk_only_raises_invalid_deadline(junk: str) -> None:
    try:
        result = parse(junk)
    except InvalidDeadline:
        return
    assert result is None or NOW < result <= NOW + WEEK
