"""The JSON depth check on 1 MB bodies: its cost next to the decode of the routing fields every call pays anyway.

Run from the repository root:

    python bench/jsondepth.py [--repeat 50] [--markdown]

For each body shape it times `router.core.jsondepth.too_deep(body, 64)` and `schema.decode_view`'s msgspec decode of
the same bytes (the work the router did per call before the check), taking the median of `--repeat` runs of
each. No server, no Redis: this is CPU time in one process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import msgspec

from router.core.jsondepth import too_deep
from router.core.schema import RequestView

LIMIT = 64
_view = msgspec.json.Decoder(RequestView)


def _chat(messages: list[dict[str, str]], **extra: object) -> bytes:
    return json.dumps({"model": "gpt-4o-mini", "messages": messages, **extra}).encode()


def shapes() -> dict[str, bytes]:
    """Body shapes of about 1 MB: the usual ones first, then the ones built to make the check work hardest."""
    tool = {"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {}}}}}
    document = json.dumps([{"id": i, "tags": ["a", "b"], "note": 'say "hi"'} for i in range(14_000)])
    return {
        "one long prompt (prose)": _chat([{"role": "user", "content": "Summarise this report. " * 45_000}]),
        "8,000 short messages": _chat([{"role": "user", "content": "hello world " * 8}] * 8_000),
        "3,000 tools (JSON schemas)": _chat([], tools=[{"type": "function", "function": {"parameters": tool}}] * 3_000),
        "a JSON document inside the prompt": _chat([{"role": "user", "content": document}]),
        "attack: [[[[...]]]] 500,000 deep": b'{"model": "m", "x": ' + b"[" * 500_000 + b"]" * 500_000 + b"}",
        "attack: 330,000 empty arrays": b'{"model": "m", "x": [' + b",".join([b"[]"] * 330_000) + b"]}",
        "attack: 15,000 chains 31 deep": b'{"model": "m", "x": [' + b",".join([b"[" * 31 + b"]" * 31] * 15_000) + b"]}",
    }


def median_ms(work: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def _view_or_error(body: bytes) -> object:
    try:
        return _view.decode(body)
    except RecursionError as exc:
        return exc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, body in shapes().items():
        check = median_ms(lambda body=body: too_deep(body, LIMIT), args.repeat)
        view = median_ms(lambda body=body: _view_or_error(body), args.repeat)
        rows.append((name, len(body) / 1e6, check, view, too_deep(body, LIMIT)))
    load = os.getloadavg()[0]
    if args.markdown:
        print(f"load average before: {load:.2f}\n")
        print("| body | MB | depth check, ms | routing-field decode, ms | refused |")
        print("|---|---|---|---|---|")
        for name, size, check, view, refused in rows:
            print(f"| {name} | {size:.2f} | {check:.2f} | {view:.2f} | {'yes' if refused else 'no'} |")
        return
    for name, size, check, view, refused in rows:
        print(f"{name:36s} {size:5.2f} MB  check {check:7.2f} ms  decode {view:7.2f} ms  refused={refused}")


if __name__ == "__main__":
    main()
