"""How the router logs: the command's format and levels (`configure_logging`), and throttled lines: a failure that
repeats (Redis down, every loop and every call) logs one line per kind per interval, saying how many it stands for,
instead of one line, or one traceback, each time."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis.exceptions

INTERVAL_S = 10.0
MAX_KINDS = 256


def configure_logging() -> None:
    """The command's log format and levels (a `serve --workers` worker calls it too)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("httpx", "httpx2"):  # httpx2: the openai SDK's client; one line per request is noise, not news
        logging.getLogger(name).setLevel(logging.WARNING)


class Throttle:
    """Log the first occurrence of each kind at once, then at most one line per `interval_s` for it.

    A line after a quiet stretch counts the occurrences it did not log; the count of the last stretch of an
    outage is told by the next line of its kind, if one comes.
    """

    def __init__(
        self, logger: logging.Logger, interval_s: float = INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self._kinds: dict[str, tuple[float, int]] = {}  # kind → (when last logged, occurrences not logged since)
        self._seen: dict[str, int] = {}  # kind → occurrences, logged or not
        self._lock = threading.Lock()  # one process may serve from several threads (tests, the demo)

    def log(
        self,
        level: int,
        kind: str,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
        stacklevel: int = 2,
    ) -> bool:
        """Log `message % args` unless `kind` was logged less than `interval_s` ago; whether it was logged."""
        now = self.clock()
        with self._lock:
            self._seen[kind] = self._seen.get(kind, 0) + 1
            last, skipped = self._kinds.get(kind, (float("-inf"), 0))
            if now - last < self.interval_s:
                self._kinds[kind] = (last, skipped + 1)
                return False
            if len(self._kinds) >= MAX_KINDS and kind not in self._kinds:
                self._kinds.clear()  # kinds come from code, not callers; this only bounds a surprise
                self._seen.clear()
            self._kinds[kind] = (now, 0)
        if skipped:
            message += " (%d more like it since the last such line, %.0f s ago)"
            args = (*args, skipped, now - last)
        self.logger.log(level, message, *args, exc_info=exc_info, stacklevel=stacklevel)  # the caller's line
        return True

    def occurrences(self) -> dict[str, int]:
        """How often each kind happened since it was first seen, logged or not."""
        with self._lock:
            return dict(self._seen)

    def warning(self, kind: str, message: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """`log` at WARNING."""
        return self.log(logging.WARNING, kind, message, *args, exc_info=exc_info, stacklevel=3)


def kind_of(where: str, exc: BaseException) -> str:
    """The kind of a failure: where it happened and the exception's class."""
    return f"{where}:{type(exc).__module__}.{type(exc).__qualname__}"


_OUTAGES = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
    OSError,
    TimeoutError,
)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc` says a service is down or unreachable (its traceback tells nothing); else it may be a bug."""
    return isinstance(exc, _OUTAGES)
