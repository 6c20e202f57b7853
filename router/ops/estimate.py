"""`hybrid-router estimate`: monthly what-if savings from a request log replayed through the policies and prices.

Both halves of the bill: the calls that can wait go to the batch (or flex) lane, and model routes (`--route`, or the
config's `routes`) answer a share of the asked-for model's calls with a cheaper one. Savings are split by lever
(batch, flex, route, prompt_cache, answer_cache) the way the router books them in its headers, `/v1/usage` and
`/metrics`: against the uncached real-time price. Lines that carry their request `body` also play the answer cache
and the router's prompt-cache breakpoints.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from router.core.deadline import ACCEPTED_FORMS, format_deadline
from router.core.errors import InvalidDeadline
from router.core.lanes import Lane
from router.core.model_routes import Route as ModelRoute
from router.core.model_routes import parse_route
from router.core.policy import Policies, load_policies
from router.core.pricing import PriceTable, Usage, load_pricing
from router.core.settings import DEFAULT_CONFIG, Settings, load_settings
from router.ops import prefixes
from router.ops.prefixes import Prefixes, PromptCacheEstimate
from router.ops.projection import (
    DEFAULT_MOVED_SHARE,
    Bill,
    LaneChooser,
    LeverEstimate,
    LogLine,
    Repeats,
    RouteEstimate,
    answer,
    check_routes,
    render_levers,
    table,
    usd,
)

__all__ = ["DEFAULT_MOVED_SHARE", "Estimate", "LaneChooser", "LogLine", "WhatIf", "add_parser", "estimate", "what_if"]

DAYS_PER_MONTH = 30.0
MIN_SPAN_S = 3600.0  # a shorter log says too little about a month to be scaled by its own span
ASSUMED_PERIOD_DAYS = 1.0
MAX_PROBLEMS = 100  # malformed lines kept with their numbers; the rest are only counted
PROGRESS_BYTES = 10 * 1024 * 1024  # about 50,000 lines of a typical log
PeriodSource = Literal["measured", "flag", "assumed"]


_DECODER = msgspec.json.Decoder(LogLine)


class Problem(msgspec.Struct, frozen=True):
    """A malformed line: its 1-based number and what is wrong with it."""

    line: int
    problem: str


class ModelEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """One model: counts as logged, dollars per month (None when the model has no price)."""

    model: str
    calls: int
    deferred_calls: int
    tokens: int
    deferred_tokens: int
    cost_now_usd_month: float | None
    cost_batch_usd_month: float | None
    savings_usd_month: float | None


class Estimate(msgspec.Struct, frozen=True, kw_only=True, tag_field="mode", tag="log"):
    """A log's traffic per month, now and with batch routing; unpriced models are left out of the dollars."""

    cost_now_usd_month: float
    """Every call at the real-time price, uncached (the router's baseline)."""
    cost_batch_usd_month: float
    savings_usd_month: float
    savings_pct: float
    calls: int
    tokens: int
    deferred_calls: int
    deferred_tokens: int
    deferred_calls_pct: float
    deferred_tokens_pct: float
    unpriced_calls: int
    unpriced_tokens: int
    models: list[ModelEstimate]
    unpriced_models: list[ModelEstimate]
    first_timestamp: str | None
    last_timestamp: str | None
    period_days: float
    period_source: PeriodSource
    month_factor: float
    malformed_lines: int
    problems: list[Problem]
    levers: list[LeverEstimate] = msgspec.field(default_factory=list)
    """Savings by lever (batch, flex, route, prompt_cache, answer_cache): they add up to `savings_usd_month`."""
    cost_logged_usd_month: float = 0.0
    """The bill as logged: real time, the log's cached tokens at the cached rate."""
    prompt_cache: PromptCacheEstimate = msgspec.field(default_factory=PromptCacheEstimate)
    routes: list[RouteEstimate] = msgspec.field(default_factory=list)
    learning_usd_month: float = 0.0


class WhatIf(msgspec.Struct, frozen=True, kw_only=True, tag_field="mode", tag="what-if"):
    """The headline number without a log: spend x batch-eligible share x (1 - batch price ratio)."""

    cost_now_usd_month: float
    cost_batch_usd_month: float
    savings_usd_month: float
    savings_pct: float
    batch_share: float
    batch_ratio: float


class _Tally(msgspec.Struct):
    calls: int = 0
    deferred_calls: int = 0
    tokens: int = 0
    deferred_tokens: int = 0
    now_usd: float = 0.0
    logged_usd: float = 0.0
    batch_usd: float = 0.0
    priced: bool = True


def _timestamp(value: str | float) -> float:
    if isinstance(value, str):
        try:
            instant = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"timestamp {value!r} is neither RFC 3339 nor Unix seconds") from None
        return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(value):
        raise ValueError(f"timestamp {value!r} is not a finite number")
    return value


def _pct(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole else 0.0


def _model(name: str, t: _Tally, factor: float) -> ModelEstimate:
    now, batch = (t.now_usd * factor, t.batch_usd * factor) if t.priced else (None, None)
    saved = None if now is None or batch is None else now - batch
    return ModelEstimate(
        model=name,
        calls=t.calls,
        deferred_calls=t.deferred_calls,
        tokens=t.tokens,
        deferred_tokens=t.deferred_tokens,
        cost_now_usd_month=now,
        cost_batch_usd_month=batch,
        savings_usd_month=saved,
    )


def estimate(
    lines: Iterable[bytes | str | LogLine],
    policies: Policies,
    prices: PriceTable,
    settings: Settings,
    *,
    period_days: float | None = None,
    routes: Sequence[ModelRoute] | None = None,
    moved_share: float | None = None,
) -> Estimate:
    """Replay each logged call through admission, price it now and as the router would answer it, and scale the
    totals to 30 days. `routes`: the model routes (default: the settings'); `moved_share`: the share of a route's
    calls a cheaper model answers (default: DEFAULT_MOVED_SHARE of its mode)."""
    chooser = LaneChooser(policies, settings, prices)
    by_source = {r.source: r for r in (settings.routes if routes is None else routes)}
    check_routes(by_source.values(), prices)
    bill = Bill(by_source.values(), prices)
    repeats, sightings = Repeats(settings), Prefixes(settings)
    tallies: dict[str, _Tally] = {}
    problems: list[Problem] = []
    malformed = 0
    times: list[float] = []  # [first, last]: a log need not be sorted
    for number, item in enumerate(lines, 1):
        if not isinstance(item, LogLine) and not item.strip():
            continue
        try:
            line = item if isinstance(item, LogLine) else _DECODER.decode(item)
            at = _timestamp(line.timestamp)
            if line.cached_tokens > line.input_tokens:
                raise ValueError("cached_tokens exceeds input_tokens (cached tokens are part of the input)")
            answered = answer(line, at, chooser, by_source, moved_share, repeats)
        except (msgspec.DecodeError, ValueError, InvalidDeadline, RecursionError) as exc:
            malformed += 1
            if len(problems) < MAX_PROBLEMS:
                # The accepted X-Deadline forms, once per line, would drown the report: the docs list them.
                problems.append(Problem(number, str(exc).removesuffix(f"; {ACCEPTED_FORMS}.")))
            continue
        times[:] = [min(at, times[0]), max(at, times[1])] if times else [at, at]
        tally = tallies.setdefault(line.model, _Tally())
        tokens = line.input_tokens + line.output_tokens
        tally.calls, tally.tokens = tally.calls + 1, tally.tokens + tokens
        if answered.lane.lane != Lane.REALTIME:
            tally.deferred_calls, tally.deferred_tokens = tally.deferred_calls + 1, tally.deferred_tokens + tokens
        usage = Usage(line.input_tokens, line.cached_tokens, line.output_tokens)
        marked = sightings.observe(line, at, answered, chooser, usage)  # the router's breakpoints, with a body
        now = prices.cost(line.model, usage, "realtime")  # baseline: uncached; actual: as logged
        if now is None:
            tally.priced = False  # never guessed: counted, and left out of every dollar figure
            continue
        tally.now_usd, tally.logged_usd = tally.now_usd + now.baseline_usd, tally.logged_usd + now.actual_usd
        tally.batch_usd += bill.add(answered, line.model, marked or usage, now.baseline_usd, added=marked is not None)
    calls = sum(t.calls for t in tallies.values())
    days, source = _period(times, calls, period_days)
    result = _summarise(tallies, times, days, source, malformed, problems)
    by_route = bill.routes(result.month_factor, moved_share)
    factor = result.month_factor
    return msgspec.structs.replace(
        result,
        cost_logged_usd_month=sum(t.logged_usd for t in tallies.values()) * factor,
        prompt_cache=sightings.summary(bill.prompt_cache["logged"] * factor, bill.prompt_cache["added"] * factor),
        levers=bill.levers(result.month_factor, result.cost_now_usd_month),
        routes=by_route,
        learning_usd_month=sum(r.learning_usd_month for r in by_route),
    )


def _period(times: list[float], calls: int, days: float | None) -> tuple[float, PeriodSource]:
    if days is not None:
        return days, "flag"
    if calls > 1 and times[1] - times[0] >= MIN_SPAN_S:
        return (times[1] - times[0]) / 86400.0, "measured"
    return ASSUMED_PERIOD_DAYS, "assumed"


def _summarise(
    tallies: dict[str, _Tally],
    times: list[float],
    days: float,
    source: PeriodSource,
    malformed: int,
    problems: list[Problem],
) -> Estimate:
    factor = DAYS_PER_MONTH / days
    ranked = sorted(tallies.items(), key=lambda kv: (-kv[1].now_usd, -kv[1].calls, kv[0]))
    priced = [_model(name, t, factor) for name, t in ranked if t.priced]
    unpriced = [_model(name, t, factor) for name, t in ranked if not t.priced]
    now = sum(t.now_usd for t in tallies.values()) * factor  # an unpriced model's tally has no dollars
    batch = sum(t.batch_usd for t in tallies.values()) * factor
    calls, tokens = sum(t.calls for t in tallies.values()), sum(t.tokens for t in tallies.values())
    deferred_calls = sum(t.deferred_calls for t in tallies.values())
    deferred_tokens = sum(t.deferred_tokens for t in tallies.values())
    return Estimate(
        cost_now_usd_month=now,
        cost_batch_usd_month=batch,
        savings_usd_month=now - batch,
        savings_pct=_pct(now - batch, now),
        calls=calls,
        tokens=tokens,
        deferred_calls=deferred_calls,
        deferred_tokens=deferred_tokens,
        deferred_calls_pct=_pct(deferred_calls, calls),
        deferred_tokens_pct=_pct(deferred_tokens, tokens),
        unpriced_calls=sum(m.calls for m in unpriced),
        unpriced_tokens=sum(m.tokens for m in unpriced),
        models=priced,
        unpriced_models=unpriced,
        first_timestamp=format_deadline(times[0]) if times else None,
        last_timestamp=format_deadline(times[1]) if times else None,
        period_days=days,
        period_source=source,
        month_factor=factor,
        malformed_lines=malformed,
        problems=problems,
    )


def what_if(monthly_spend: float, share: float, batch_ratio: float = 0.5) -> WhatIf:
    """Savings when `share` of `monthly_spend` moves to a lane that costs `batch_ratio` of the real-time price."""
    saved = monthly_spend * share * (1.0 - batch_ratio)
    return WhatIf(
        cost_now_usd_month=monthly_spend,
        cost_batch_usd_month=monthly_spend - saved,
        savings_usd_month=saved,
        savings_pct=_pct(saved, monthly_spend),
        batch_share=share,
        batch_ratio=batch_ratio,
    )


def render(result: Estimate | WhatIf, console: Console) -> None:
    """Print `result` as rich tables."""
    routed = isinstance(result, Estimate) and bool(result.routes)
    rows = [
        ("Cost now (all real time)", usd(result.cost_now_usd_month)),
        ("Cost with the router" if routed else "Cost with batch routing", usd(result.cost_batch_usd_month)),
        ("Savings", f"{usd(result.savings_usd_month)} ({result.savings_pct:.1f}%)"),
    ]
    if isinstance(result, WhatIf):
        note = f"{result.batch_share:.0%} of the spend at {result.batch_ratio:g}x the real-time price"
        console.print(table("Estimated monthly cost", ("", ""), rows, show_header=False, caption=note))
        return
    if usd(result.cost_logged_usd_month) != rows[0][1]:  # the log's own cache hits: today's bill is below the baseline
        rows.insert(1, ("Cost as logged (its cache hits)", usd(result.cost_logged_usd_month)))
    rows.append(("Calls deferred", f"{result.deferred_calls:,} of {result.calls:,} ({result.deferred_calls_pct:.1f}%)"))
    rows.append(
        ("Tokens deferred", f"{result.deferred_tokens:,} of {result.tokens:,} ({result.deferred_tokens_pct:.1f}%)")
    )
    basis = {"measured": "its time span", "flag": "--period-days", "assumed": "assumed"}[result.period_source]
    note = f"log: {result.period_days:.4g} day(s) ({basis}), scaled x{result.month_factor:.4g} to 30 days"
    console.print(table("Estimated monthly cost", ("", ""), rows, show_header=False, caption=note))
    render_levers(result.levers, result.routes, result.cost_now_usd_month, result.learning_usd_month, console)
    prefixes.render(result.prompt_cache, usd, console)
    columns = ("Model", "Calls", "Deferred", "Now", "Router" if routed else "Batch", "Saved")  # tokens: see --json
    by_model = [
        (
            escape(m.model),
            f"{m.calls:,}",
            f"{_pct(m.deferred_calls, m.calls):.0f}%",
            *map(usd, (m.cost_now_usd_month, m.cost_batch_usd_month, m.savings_usd_month)),
        )
        for m in result.models
    ]
    if by_model:
        console.print(
            table("By model, per month", columns, by_model, caption="calls as logged; deferred: share of the calls")
        )
    notes = []
    if result.unpriced_models:
        unpriced = [(escape(m.model), f"{m.calls:,}", f"{m.tokens:,}") for m in result.unpriced_models]
        console.print(table("Not priced", ("Model", "Calls", "Tokens"), unpriced))
        notes.append(f"{result.unpriced_calls:,} calls of models with no price are left out of every dollar figure.")
    if result.period_source == "assumed":
        notes.append("The log spans under an hour: assumed it covers 1 day; set it with --period-days.")
    if result.malformed_lines:
        notes.append(f"{result.malformed_lines:,} malformed line(s) skipped.")
    for line in notes:
        console.print(line, style="yellow", markup=False, highlight=False)


def _tracked(file: IO[bytes], progress: Progress, task: TaskID) -> Iterator[bytes]:
    done = 0
    for count, line in enumerate(file, 1):
        done += len(line)
        if count % 8192 == 0:  # each update takes rich's lock: advance in strides, not per line
            progress.update(task, completed=done)
        yield line


@contextlib.contextmanager
def _open_log(name: str, show_progress: bool) -> Iterator[Iterable[bytes]]:
    """The log's lines, streamed; with a progress bar on stderr when the file is large."""
    if name == "-":
        yield sys.stdin.buffer
        return
    with Path(name).open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if not (show_progress and size > PROGRESS_BYTES):
            yield file
            return
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
            yield _tracked(file, progress, progress.add_task(f"reading {name}", total=size))


def _usage_error(args: argparse.Namespace) -> str | None:
    flags = (args.what_if_share is not None, args.monthly_spend is not None)
    if any(flags) and not all(flags):
        return "--what-if-share and --monthly-spend go together"
    if all(flags) and args.log is not None:
        return "give a request log or --what-if-share/--monthly-spend, not both"
    if not any(flags) and args.log is None:
        return "give a request log (JSONL), or --what-if-share FRACTION --monthly-spend USD"
    if args.batch_ratio is not None and args.log is not None:
        return "--batch-ratio is for --what-if-share; a log is priced with the pricing table"
    if args.log is None and (args.route or args.moved_share is not None):
        return "--route and --moved-share need a request log"
    return None


def route_flag(text: str) -> ModelRoute:
    """An argparse type: `--route FROM=TO[,TO2...]`, a predict route (candidates cheapest first)."""
    source, sep, targets = text.partition("=")
    try:
        if not sep:
            raise msgspec.ValidationError("expected FROM=TO, e.g. gpt-4o=gpt-4o-mini")
        return parse_route({"from": source.strip(), "to": [t.strip() for t in targets.split(",")]})
    except msgspec.ValidationError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def routes_of(settings: Settings, flags: Sequence[ModelRoute]) -> list[ModelRoute]:
    """The config's model routes, with `--route` flags added (a flag replaces the config's route of its model)."""
    by_source = {r.source: r for r in settings.routes}
    by_source.update((flag.source, flag) for flag in flags)
    return list(by_source.values())


def _from_log(args: argparse.Namespace) -> Estimate | int:
    """The estimate for `args.log`, or an exit code once the problem is reported."""
    config = Path(args.config) if args.config else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    settings = load_settings(config, os.environ)
    policies = load_policies(Path(args.policies or settings.policies_dir))
    prices = load_pricing(Path(args.pricing or settings.pricing_file))
    routes = routes_of(settings, args.route or [])
    try:
        check_routes(routes, prices)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with _open_log(args.log, not args.json and sys.stderr.isatty()) as lines:
            result = estimate(
                lines, policies, prices, settings, period_days=args.period_days, routes=routes,
                moved_share=args.moved_share,
            )  # fmt: skip
    except OSError as exc:
        print(f"error: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    for bad in result.problems:
        print(f"{args.log}:{bad.line}: {bad.problem}", file=sys.stderr)
    if result.malformed_lines > len(result.problems):
        print(f"... and {result.malformed_lines - len(result.problems):,} more malformed lines", file=sys.stderr)
    if args.strict and result.malformed_lines:
        print(f"error: {result.malformed_lines:,} malformed line(s) in {args.log} (--strict)", file=sys.stderr)
        return 2
    return result


def run(args: argparse.Namespace) -> int:
    """Run `hybrid-router estimate`: 0 on success; 2 on a usage error, an unreadable log or (--strict) a bad line."""
    if problem := _usage_error(args):
        print(f"error: {problem}", file=sys.stderr)
        return 2
    result: Estimate | WhatIf | int
    if args.log is None:
        result = what_if(args.monthly_spend, args.what_if_share, 0.5 if args.batch_ratio is None else args.batch_ratio)
    elif isinstance(result := _from_log(args), int):
        return result
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(result), indent=2).decode() + "\n")
    else:
        render(result, Console())
    return 0


def _number(low: float, high: float = math.inf, *, open_low: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] when `open_low`); else a usage error."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan  # fails every comparison below
        if not math.isfinite(value) or not (low < value <= high if open_low else low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a number in {'(' if open_low else '['}{low:g}, {high:g}]")
        return value

    return parse


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `estimate` and its flags on the CLI's subcommands."""
    p = sub.add_parser("estimate", help="what-if monthly savings from a request log", description=__doc__)
    p.add_argument("log", nargs="?", help="JSONL request log, one call per line (- reads stdin)")
    p.add_argument("--config", help=f"config file (default: {DEFAULT_CONFIG} if present)")
    p.add_argument("--policies", metavar="DIR", help="policy directory (default: the config's policies_dir)")
    p.add_argument("--pricing", metavar="FILE", help="pricing file (default: the config's pricing_file)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--period-days", type=_number(0, open_low=True), metavar="N", help="days the log covers")
    p.add_argument("--what-if-share", type=_number(0, 1), metavar="FRACTION", help="no log: batch-eligible share")
    p.add_argument("--monthly-spend", type=_number(0), metavar="USD", help="no log: real-time spend per month")
    p.add_argument("--batch-ratio", type=_number(0, 1), metavar="RATIO", help="batch/real-time price (default 0.5)")
    p.add_argument("--strict", action="store_true", help="exit 2 when any line is malformed")
    p.add_argument(
        "--route",
        action="append",
        type=route_flag,
        metavar="FROM=TO",
        help="a model route in predict mode, e.g. gpt-4o=gpt-4o-mini (repeatable; adds to the config's routes)",
    )
    p.add_argument(
        "--moved-share",
        type=_number(0, 1),
        metavar="FRACTION",
        help="share of a route's calls a cheaper model answers (default: measured on public data, docs/routing.md: "
        f"predict {DEFAULT_MOVED_SHARE['predict']:g}, cascade {DEFAULT_MOVED_SHARE['cascade']:g})",
    )
    p.set_defaults(func=run)
