"""The hybrid-router Grafana dashboard as code: writes dashboards/hybrid-router.json (`--check`: fail if stale)."""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import DashboardCursorSync, DataSourceRef

OUT = Path(__file__).resolve().parent / "dashboards" / "hybrid-router.json"
UID = "hybrid-router"
# Panels name the datasource through the variable, so the JSON imports into any Grafana whatever its uid.
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
WINDOW = "$__rate_interval"
M = "hybrid_router_"

Query = tuple[str, str]  # (PromQL, legend)


def target(ref: str, expr: str, legend: str, *, instant: bool = False) -> prometheus.Dataquery:
    """One PromQL query on the dashboard's datasource."""
    query = prometheus.Dataquery().ref_id(ref).datasource(DATASOURCE).expr(expr).legend_format(legend)
    return query.instant() if instant else query.range()


def graph(title: str, unit: str, queries: list[Query], *, description: str = "", width: int = 12) -> timeseries.Panel:
    """A time series panel with one line per query (and per label set of each)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(8)
        .span(width)
        .fill_opacity(10)
        .legend(
            common.VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.LIST)
            .placement(LegendPlacement.BOTTOM)
        )
        .tooltip(common.VizTooltipOptions().mode(TooltipDisplayMode.MULTI).sort(SortOrder.DESCENDING))
    )
    if description:
        panel = panel.description(description)
    for ref, (expr, legend) in zip(string.ascii_uppercase, queries, strict=False):
        panel = panel.with_target(target(ref, expr, legend))
    return panel


def shares(title: str, counter: str, description: str) -> timeseries.Panel:
    """Each lane's share of a counter's rate, stacked to 100%."""
    total = f"sum(rate({counter}[{WINDOW}]))"
    expr = f"sum by (lane) (rate({counter}[{WINDOW}])) / ignoring(lane) group_left {total}"
    return (
        graph(title, "percentunit", [(expr, "{{lane}}")], description=description)
        .stacking(common.StackingConfig().mode(StackingMode.NORMAL))
        .min(0)
        .max(1)
    )


def headline(title: str, unit: str, expr: str, description: str, *, width: int = 6) -> stat.Panel:
    """A single number over the selected time range."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(width)
        .graph_mode(BigValueGraphMode.NONE)
        .color_mode(BigValueColorMode.VALUE)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(target("A", expr, title, instant=True))
    )


def quantiles(histogram: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99), by: str = "") -> list[Query]:
    """Quantiles of a histogram over all replicas, optionally one line per value of label `by`."""
    labels = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        (
            f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket[{WINDOW}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in qs
    ]


def net(saved: str, lost: str) -> str:
    """`saved - lost` per label set, where either side may have no series yet for a label set (a counter is born at
    its first increment): a side that is missing counts as 0 instead of dropping the label set."""
    return f"({saved} or {lost} * 0) - ({lost} or {saved} * 0)"


def rate_by(labels: str, counter: str) -> str:
    """A counter's rate over all replicas, one series per value of `labels` (none: a single series)."""
    return f"sum by ({labels}) (rate({counter}[{WINDOW}]))" if labels else f"sum(rate({counter}[{WINDOW}]))"


def build() -> dashboard.Dashboard:
    """The whole dashboard."""
    savings, baseline, cost = f"{M}savings_usd_total", f"{M}baseline_cost_usd_total", f"{M}cost_usd_total"
    losses = f"{M}losses_usd_total"
    lever_saved, lever_lost = f"{M}lever_savings_usd_total", f"{M}lever_losses_usd_total"
    answers = f"{M}answer_cache_total"
    hits, looked_up = f'{answers}{{event="hit"}}', f'{answers}{{event=~"hit|miss"}}'
    decisions = f"{M}route_decisions_total"
    escalated = f'{decisions}{{reason="cascade_escalated"}}'
    cascaded = f'{decisions}{{reason=~"cascade_kept|cascade_escalated"}}'
    net_range = net(f"sum(increase({savings}[$__range]))", f"sum(increase({losses}[$__range]))")
    board = (
        dashboard.Dashboard("hybrid-router")
        .uid(UID)
        .description(
            "Savings (by lane and by lever), lanes, cost, model routes, the deferred lane, batch turnaround, "
            "deadlines and escalations, held connections, tenants' limits, and real-time latency."
        )
        .tags(["hybrid-router"])
        .readonly()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus"))
    )
    board = (
        board.with_row(dashboard.Row("Savings"))
        .with_panel(
            headline(
                "Savings",
                "currencyUSD",
                net_range,
                "Real-time price of the asked-for model minus what was paid, for the calls finished in the selected "
                "range, net of losses (a cascade's thrown-away cheap calls).",
                width=4,
            )
        )
        .with_panel(
            headline(
                "Savings %",
                "percentunit",
                f"({net_range}) / sum(increase({baseline}[$__range]))",
                "Net savings as a share of the real-time baseline, over the selected range.",
                width=4,
            )
        )
        .with_panel(
            headline(
                "Spend",
                "currencyUSD",
                f"sum(increase({cost}[$__range]))",
                "What the calls cost, all lanes.",
                width=4,
            )
        )
        .with_panel(
            headline(
                "Calls paid twice",
                "short",
                f"sum(increase({M}paid_twice_total[$__range]))",
                "Batch lines the provider finished, and bills, for calls an escalation had already answered: "
                "money spent twice. Anything above zero means batches run late for their deadlines: see the "
                "Deadlines and escalations row.",
                width=4,
            )
        )
        .with_panel(
            headline(
                "Escalations",
                "short",
                f"sum(increase({M}deadline_escalations_total[$__range]))",
                "Deferred calls answered in real time to keep their deadline, over the selected range: each one "
                "lost the batch discount unless the flex tier answered it.",
                width=4,
            )
        )
        .with_panel(
            headline(
                "Deadline misses",
                "short",
                f"sum(increase({M}deadline_misses_total[$__range]))",
                "Calls answered after their X-Deadline, over the selected range.",
                width=4,
            )
        )
        .with_panel(
            graph(
                "Savings by lane (USD/h)",
                "currencyUSD",
                [(f"({net(rate_by('lane', savings), rate_by('lane', losses))}) * 3600", "{{lane}}")],
                description="Baseline minus actual cost, net of losses, as an hourly rate.",
            )
        )
        .with_panel(
            graph(
                "Savings % of the real-time baseline",
                "percentunit",
                [
                    (
                        f"({net(rate_by('', savings), rate_by('', losses))}) / {rate_by('', baseline)}",
                        "savings",
                    )
                ],
                description="Net savings over the baseline. Batch is 50% cheaper: the batch lever alone reaches 50% "
                "when every call waits; a model route adds what the cheaper model saves on the urgent calls.",
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Savings by lever"))
        .with_panel(
            graph(
                "Net savings by lever (USD/h)",
                "currencyUSD",
                [(f"({net(rate_by('lever', lever_saved), rate_by('lever', lever_lost))}) * 3600", "{{lever}}")],
                description="Where the savings come from: batch (the batch discount), flex (the flex tier), route (a "
                "cheaper model answered a call asked of a dearer one, at the real-time price), prompt_cache (input "
                "read from the provider's prompt cache, less the cache writes' premium), answer_cache (a repeated "
                "deterministic call answered from the router's answer cache, at no cost). Each lever's savings "
                "minus its losses, stacked: the stack is the net savings of every lane. A cascade's thrown-away cheap "
                "call is a loss on the route lever.",
                width=8,
            ).stacking(common.StackingConfig().mode(StackingMode.NORMAL))
        )
        .with_panel(
            graph(
                "Saved and lost by lever (USD/h)",
                "currencyUSD",
                [
                    (f"{rate_by('lever', lever_saved)} * 3600", "saved {{lever}}"),
                    (f"-{rate_by('lever', lever_lost)} * 3600", "lost {{lever}}"),
                ],
                description="The two halves of each lever's net savings: lost is drawn below zero. A route whose "
                "losses rival its savings escalates too many cascaded calls: raise its evidence or use predict.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Losses by lane and model (USD/h)",
                "currencyUSD",
                [(f"{rate_by('lane, model', losses)} * 3600", "{{lane}} {{model}}")],
                description="Calls that cost more than their baseline: a cascade's cheap answer thrown away when the "
                "asked-for model had to answer (its baseline is 0, its whole price is lost). Net savings are savings "
                "minus these.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Answer cache hit ratio",
                "percentunit",
                [
                    (
                        f"{rate_by('', hits)} / {rate_by('', looked_up)}",
                        "hits / (hits + misses)",
                    )
                ],
                description="Deterministic calls the answer cache answered, of those it looked up (bypasses left "
                "out). Each hit costs nothing and saves its real-time price on the answer_cache lever.",
            ).min(0)
        )
        .with_panel(
            graph(
                "Answer cache events (per second)",
                "ops",
                [(rate_by("event", answers), "{{event}}")],
                description="hit, miss, bypass (the caller's Cache-Control: no-cache / no-store or X-Router-Cache: "
                "off, a sampled call, a Redis error), stored, evicted (least recently used, past a tenant's bounds), "
                "too_large.",
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Lanes"))
        .with_panel(
            shares(
                "Share of calls by lane",
                f"{M}requests_total",
                "Finished calls; escalated = deferred calls answered in real time to keep their deadline.",
            )
        )
        .with_panel(shares("Share of tokens by lane", f"{M}tokens_total", "Input, cached input and output tokens."))
        .with_panel(
            graph(
                "Calls by lane and outcome (per second)",
                "reqps",
                [(f"sum by (lane, outcome) (rate({M}requests_total[{WINDOW}]))", "{{lane}} {{outcome}}")],
            )
        )
        .with_panel(
            graph(
                "Unpriced calls by model",
                "short",
                [(f"sum by (model) (increase({M}unpriced_calls_total[{WINDOW}]))", "{{model}}")],
                description="Calls whose model has no price in pricing.yaml: they are missing from cost and savings.",
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Cost"))
        .with_panel(
            graph(
                "Cost by model (USD/h)",
                "currencyUSD",
                [(f"sum by (model) (rate({cost}[{WINDOW}])) * 3600", "{{model}}")],
            )
        )
        .with_panel(
            graph(
                "Cost by tenant (USD/h)",
                "currencyUSD",
                [(f"sum by (tenant) (rate({cost}[{WINDOW}])) * 3600", "{{tenant}}")],
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Model routes"))
        .with_panel(
            graph(
                "Route decisions by reason and model (per second)",
                "reqps",
                [(f"{rate_by('route, model, reason', decisions)}", "{{route}}: {{reason}} -> {{model}}")],
                description="Calls of each model route (asked-for>candidates), by the model that answered and why: "
                "evidence (the plan moves the task), share (a split task's draw), below_target, no_evidence, opt_out "
                "(X-Router-Route: off), forced (X-Router-Route: force), shadow (answered as asked, shadow mode), "
                "cascade_ineligible (streamed, deferred or not a chat call), cascade_kept, cascade_escalated; shadowed "
                "counts the cheaper twins a shadow route sent to learn.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Moved share by route",
                "percentunit",
                [(f"max by (route) ({M}route_moved_share)", "{{route}}")],
                description="Share of each route's evidence-weighted calls its current plan sends to a cheaper model "
                "(plans are remade from the evidence every 5 s). A Redis value: max over replicas.",
                width=8,
            )
            .min(0)
            .max(1)
        )
        .with_panel(
            graph(
                "Cascade escalation rate",
                "percentunit",
                [(f"{rate_by('route', escalated)} / {rate_by('route', cascaded)}", "{{route}}")],
                description="Share of cascaded calls whose cheap answer failed its checks (or its check bucket's "
                "evidence) and was escalated to the asked-for model: each one paid for two calls and waited for both.",
                width=8,
            )
            .min(0)
            .max(1)
        )
        .with_panel(
            graph(
                "Learning cost (USD/h)",
                "currencyUSD",
                [(f"{rate_by('route, kind', f'{M}route_learning_cost_usd_total')} * 3600", "{{route}} {{kind}}")],
                description="What learning costs: shadow calls to the cheaper model, and judge calls on free-text "
                "pairs that differ. Not in the savings: it is the price of the evidence.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Cascade added latency",
                "s",
                quantiles(f"{M}route_cascade_seconds", by="route"),
                description="Time a cascade added to an escalated call before the asked-for model was asked: the "
                "cheaper model's call and its checks. Kept calls add nothing (a faster model answered).",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Evidence per task (calls)",
                "short",
                [(f"max by (route, task) ({M}route_evidence_calls)", "{{route}} {{task}}")],
                description="Decayed calls of evidence behind each task's estimate (the 50 tasks with the most per "
                "route), from routes learn, shadow pairs and feedback. Evidence halves every half_life_s (14 days by "
                "default). A Redis value: max over replicas.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Quality lower bound per task",
                "percentunit",
                [(f"max by (route, task, model) ({M}route_quality_lower_bound)", "{{route}} {{task}} {{model}}")],
                description="Lower confidence bound of each task's quality ratio (the candidate's mean score over the "
                "asked-for model's). A task moves (per_task allocation) when this meets the route's quality_target "
                "(0.95 by default). A Redis value: max over replicas.",
                width=24,
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Deferred lane"))
        .with_panel(
            graph(
                "Queue depth",
                "short",
                [(f"max by (queue) ({M}queue_depth)", "{{queue}}")],
                description="Calls waiting to be packed into a batch. Every replica reports the same Redis value: max.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Batches in flight",
                "short",
                [(f"max({M}batches_inflight)", "in flight")],
                description="Provider batches submitted and not yet ingested (a Redis value: max over replicas).",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Deferred calls (per second)",
                "reqps",
                [
                    (f"sum(rate({M}deferred_admitted_total[{WINDOW}]))", "admitted"),
                    (f"sum(rate({M}batch_lines_submitted_total[{WINDOW}]))", "sent in batches"),
                ],
                width=8,
            )
        )
        .with_panel(
            graph(
                "Batches submitted and finished",
                "short",
                [
                    (f"sum(increase({M}batches_submitted_total[{WINDOW}]))", "submitted"),
                    (f"sum by (status) (increase({M}batches_finished_total[{WINDOW}]))", "finished {{status}}"),
                ],
                width=8,
            )
        )
        .with_panel(
            graph(
                "Calls not deferred",
                "short",
                [
                    (
                        f"sum by (upstream) (increase({M}deferred_unknown_model_total[{WINDOW}]))",
                        "unknown model {{upstream}}",
                    ),
                    (f"sum(increase({M}deferred_queues_refused_total[{WINDOW}]))", "refused: max_queues"),
                ],
                description="Calls that asked to wait but did not. Unknown model: no price, not in the upstream's "
                "/models and not in its `models`, so it went real time at full price; add it to pricing.yaml or "
                "the upstream's `models`. Refused: a 429 because a new queue would pass `limits.max_queues`; raise "
                "it if the models are legitimate.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Webhook deliveries",
                "short",
                [(f"sum by (outcome) (increase({M}webhook_deliveries_total[{WINDOW}]))", "{{outcome}}")],
                description="Signed events sent to callers' X-Webhook-URL: delivered, retried after a failed "
                "attempt, or dropped after the last attempt.",
                width=8,
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Turnaround"))
        .with_panel(
            graph(
                "Batch turnaround",
                "s",
                quantiles(f"{M}batch_turnaround_seconds"),
                description="From creating a provider batch to ingesting its results, as observed.",
                width=8,
            ).interval("15m")  # batches end minutes to hours apart: short windows would show mostly gaps
        )
        .with_panel(
            graph(
                "Turnaround estimate by queue",
                "s",
                [(f"max by (queue, quantile) ({M}turnaround_estimate_seconds)", "{{queue}} {{quantile}}")],
                description="Each queue's batch turnaround as the model predicts it now: the median (0.5) and the "
                "quantile admission plans with (admit, `batch.admit_quantile`). A call is deferred only if a batch "
                "is expected back by then with its margin to spare, so a rising admit line means more calls go "
                "real time. Far above the observed turnaround: the prior (`batch.turnaround_prior_s`) still weighs "
                "in. A Redis value: max over replicas.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Turnaround evidence by queue",
                "short",
                [(f"max by (queue) ({M}turnaround_evidence_batches)", "{{queue}}")],
                description="Batches' worth of decayed observations behind each queue's estimate. Below "
                "`batch.turnaround_min_observations` (5 by default) the prior still counts; it decays with "
                "`batch.turnaround_half_life_s`, so a queue that stops batching drifts back to the prior. A Redis "
                "value: max over replicas.",
                width=8,
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Deadlines and escalations"))
        .with_panel(
            graph(
                "Deadline escalations by reason and tier",
                "short",
                [
                    (
                        f"sum by (reason, tier) (increase({M}deadline_escalations_total[{WINDOW}]))",
                        "{{reason}}, {{tier}}",
                    )
                ],
                description="Deferred calls answered in real time to keep their deadline: at admission (no batch "
                "could make it), or by the guard while queued or submitted; answered by the flex tier (the batch "
                "price) or the standard tier (full price). Much standard where the upstream offers flex: raise "
                "`batch.flex_s`.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Deadline misses",
                "short",
                [(f"sum(increase({M}deadline_misses_total[{WINDOW}]))", "misses")],
                description="Calls answered after their deadline.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Batches cut",
                "short",
                [(f"sum by (upstream) (increase({M}batches_cut_total[{WINDOW}]))", "{{upstream}}")],
                description="Batches the router cancelled because a call in them would otherwise escalate "
                "(`batch.cancel_lead_s` before its escalation). Frequent cuts: the turnaround estimate is too "
                "optimistic for the deadlines callers send.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Calls harvested from cut batches",
                "short",
                [(f"sum by (upstream) (increase({M}harvested_lines_total[{WINDOW}]))", "{{upstream}}")],
                description="Calls answered at the batch price from the lines a cut batch had finished before it was "
                "cancelled: what cutting saved over escalating the whole batch.",
            )
        )
        .with_panel(
            graph(
                "Batch line errors after admission",
                "short",
                [
                    (
                        f"sum by (upstream, model, status) (increase({M}batch_line_errors_total[{WINDOW}]))",
                        "{{upstream}} {{model}} {{status}}",
                    )
                ],
                description="Batch lines the upstream refused or failed after the router had admitted the call: the "
                "caller waited for an error. A 4xx here is a check admission (`core.validation`) does not make yet.",
            )
        )
        .with_panel(
            graph(
                "Calls paid twice",
                "short",
                [
                    (f"sum(increase({M}late_batch_results_total[{WINDOW}]))", "late results, all upstreams"),
                    (f"sum by (upstream) (increase({M}paid_twice_total[{WINDOW}]))", "paid twice {{upstream}}"),
                ],
                description="Batch results that came in after an escalation had answered their call: the provider "
                "bills the line, the router drops it, and the call is paid twice. Raise `batch.cancel_lead_s` so "
                "late batches are cut, and what they finished harvested, before their calls escalate.",
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Held connections"))
        .with_panel(
            graph(
                "Held connections",
                "short",
                [(f"sum({M}held_connections)", "held")],
                description="Connections held open until a deferred answer arrives, summed over processes. Past "
                "`limits.max_held` new held calls get 429: raise it, or have callers send `Prefer: respond-async`.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Held calls refused and cut short",
                "short",
                [
                    (f"sum(increase({M}held_refused_total[{WINDOW}]))", "refused at max_held"),
                    (f"sum by (reason) (increase({M}held_cut_total[{WINDOW}]))", "cut: {{reason}}"),
                ],
                description="Refused: 429 before storing, the held-connection cap was reached. Cut: a held answer "
                "ended on purpose; on error or shutdown the caller's retry re-attaches to its call, at hold_limit "
                "(`batch.hold_s`) it gets 504 and must fetch the result with GET /v1/deferred/{id}.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Re-attached retries",
                "short",
                [(f"sum(increase({M}deferred_reattached_total[{WINDOW}]))", "re-attached")],
                description="Requests that matched a deferred call already stored (a retry after a lost "
                "connection) and waited for it instead of being billed again. A steady stream means clients or "
                "proxies drop long-held connections: check their timeouts against `batch.keepalive_s`.",
                width=8,
            )
        )
    )
    board = (
        board.with_row(dashboard.Row("Tenants"))
        .with_panel(
            graph(
                "Headroom left, share of each limit",
                "percentunit",
                [
                    (
                        f"min by (tenant, limit) ({M}tenant_headroom) / max by (tenant, limit) ({M}tenant_limit)",
                        "{{tenant}} {{limit}}",
                    )
                ],
                description="What each limited tenant may still use now over its limit: rpm (calls it could make at "
                "once), max_deferred (deferred calls it could add), daily_budget_usd (budget left today). Near 0 "
                "its next calls get 429.",
                width=8,
            ).min(0)
        )
        .with_panel(
            graph(
                "Daily budget left (USD)",
                "currencyUSD",
                [(f'min by (tenant) ({M}tenant_headroom{{limit="daily_budget_usd"}})', "{{tenant}}")],
                description="USD each tenant with a `daily_budget_usd` may still spend today (UTC); at 0 its "
                "calls get 429 insufficient_quota until midnight UTC.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Calls refused by tenant limit",
                "short",
                [(f"sum by (tenant, limit) (increase({M}tenant_refused_total[{WINDOW}]))", "{{tenant}} {{limit}}")],
                description="429s sent because a tenant was over a limit. Expected when a tenant bursts; steady "
                "refusals mean its limit in `tenants` is too low for its traffic, or it needs to slow down.",
                width=8,
            )
        )
    )
    return (
        board.with_row(dashboard.Row("Real-time latency"))
        .with_panel(
            graph(
                "Proxy overhead",
                "s",
                quantiles(f"{M}proxy_overhead_seconds", (0.5, 0.99)),
                description="Time the router adds to a real-time call (total handling time minus upstream time).",
            )
        )
        .with_panel(
            graph(
                "Upstream latency p99",
                "s",
                quantiles(f"{M}upstream_latency_seconds", (0.99,), by="upstream"),
                description="From sending a real-time call upstream to its response headers.",
            )
        )
        .with_panel(
            graph(
                "Event-loop lag",
                "s",
                quantiles(f"{M}event_loop_lag_seconds", (0.5, 0.99)),
                description="How late each process's event loop woke a probe that sleeps 0.1 s. Every call a "
                "process serves waits out a stall: a p99 above a few ms means CPU starvation (too few cores or "
                "workers), long synchronous steps or collector pauses (see the next panel).",
            )
        )
        .with_panel(
            graph(
                "Time in garbage collection",
                "percentunit",
                [(f"sum by (generation) (rate({M}gc_pause_seconds_sum[{WINDOW}]))", "generation {{generation}}")],
                description="Share of wall time the processes spent in collector pauses, by generation (2: the "
                "whole heap). `gc_tuning` keeps generation 2 rare.",
            )
        )
    )


def render() -> str:
    """The dashboard JSON, as committed: panel ids numbered in order, stable formatting."""
    model = build().build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return json.dumps(model, cls=JSONEncoder, indent=2) + "\n"


def main(argv: list[str] | None = None, out: Path = OUT) -> int:
    """Write the dashboard JSON, print it (`--stdout`), or exit 1 if the file is out of date (`--check`)."""
    parser = argparse.ArgumentParser(description=__doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs from this source")
    mode.add_argument("--stdout", action="store_true", help="print the JSON instead of writing the file")
    args = parser.parse_args(argv)
    text = render()
    if args.stdout:
        sys.stdout.write(text)
        return 0
    if args.check:
        if out.exists() and out.read_text() == text:
            return 0
        print(f"{out} is out of date: run `python config/grafana/dashboard.py`", file=sys.stderr)
        return 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
