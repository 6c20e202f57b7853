"""Throttled logging: the rule on a clock of our own, then a real Redis outage (a router pointed at a closed port)."""

from __future__ import annotations

import collections
import logging
import time

import httpx
import pytest
import redis.exceptions

from router.deferred import loops, waiters
from router.deferred.store import totals
from router.http import error_handlers
from router.http.app import create_app
from router.ops.serving import free_port, serve_in_thread
from router.telemetry.logs import INTERVAL_S, Throttle, is_outage, kind_of
from tests.helpers.servers import Sim, router_settings
from tests.helpers.waiting import wait_until

LOOPS = ("batcher", "poller", "guard", "webhooks")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_kind_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    throttle = Throttle(logging.getLogger("test.throttle"), interval_s=10.0, clock=clock)
    logged = [throttle.warning("a", "down: %s", i) for i in range(5)]
    assert throttle.warning("b", "other")  # another kind has its own interval
    clock.now += 10.0
    assert throttle.warning("a", "down: %s", 5)
    clock.now += 3.0
    assert not throttle.warning("a", "down: %s", 6)
    assert logged == [True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "down: 0",
        "other",
        "down: 5 (4 more like it since the last such line, 10 s ago)",
    ]
    assert throttle.occurrences() == {"a": 7, "b": 1}


def test_a_traceback_is_kept_when_asked_for(caplog: pytest.LogCaptureFixture) -> None:
    throttle = Throttle(logging.getLogger("test.throttle"))
    try:
        raise KeyError("bug")
    except KeyError as exc:
        throttle.log(logging.ERROR, kind_of("loop", exc), "failed", exc_info=exc)
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[1] is not None


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (redis.exceptions.ConnectionError("refused"), True),
        (redis.exceptions.TimeoutError("slow"), True),
        (redis.exceptions.ReadOnlyError("replica"), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (redis.exceptions.ResponseError("ERR bad script"), False),
        (KeyError("x"), False),
    ],
)
def test_outages_are_told_from_bugs(exc: BaseException, outage: bool) -> None:
    assert is_outage(exc) is outage


def _occurrences() -> collections.Counter[str]:
    seen: collections.Counter[str] = collections.Counter()
    for module in (loops, error_handlers, waiters, totals):
        seen.update(module._throttle.occurrences())
    return seen


def _by_where(counts: collections.Counter[str], where: str) -> int:
    return sum(n for kind, n in counts.items() if kind.startswith(where + ":"))


@pytest.mark.integration  # a router served in this process
def test_a_redis_outage_logs_a_line_per_kind_per_interval(
    sim: Sim, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    before = _occurrences()
    started = time.monotonic()
    closed = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there: every Redis call fails at once
    fast = {"max_wait_s": 0.2, "poll_interval_s": 0.2}
    settings = router_settings(sim, closed, key_prefix, batch=fast, webhooks={"backoff_s": 0.2})
    with serve_in_thread(create_app(settings, {"SIM_KEY": "sk-sim"})) as base:
        for _ in range(20):
            assert httpx.get(base + "/v1/deferred/abc").status_code == 503
        wait_until(
            lambda: all(_by_where(_occurrences() - before, name) >= 5 for name in (*LOOPS, "api", "waiters")),
            30,
            "every loop to keep failing",
            every=0.1,
        )
    elapsed = time.monotonic() - started
    seen = _occurrences() - before
    lines: dict[str, list[logging.LogRecord]] = collections.defaultdict(list)
    for record in caplog.records:
        if record.name.startswith("router"):
            lines[record.getMessage().partition(":")[0]].append(record)
    allowed = 1 + int(elapsed // INTERVAL_S)  # the first line of a kind, then one per interval
    assert lines, "nothing was logged"
    for what, records in lines.items():
        assert len(records) <= allowed, (what, [r.getMessage() for r in records])
        assert all(r.exc_info is None for r in records), what  # an outage needs no traceback
    assert sum(seen.values()) >= 6 * 5
    assert sum(len(records) for records in lines.values()) < sum(seen.values())
