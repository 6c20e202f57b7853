"""Every Prometheus metric, declared once; labels come from closed sets, never ids."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)
NS = "hybrid_router"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
TURNAROUND_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400)

requests = Counter(
    "requests",
    "Calls the router finished, by lane and outcome.",
    ["lane", "upstream", "model", "tenant", "outcome"],
    namespace=NS,
    registry=REGISTRY,
)
batch_line_errors = Counter(
    "batch_line_errors",
    "Batch lines the upstream answered with an error (4xx, 5xx) after the call was admitted: what admission's checks "
    "(`core.validation`) did not catch.",
    ["upstream", "model", "status"],
    namespace=NS,
    registry=REGISTRY,
)
tokens = Counter(
    "tokens",
    "Tokens of finished calls; kind is input, cached_input or output.",
    ["lane", "model", "kind"],
    namespace=NS,
    registry=REGISTRY,
)
cost = Counter(
    "cost_usd",
    "What finished calls cost at the rate actually paid (USD).",
    ["lane", "model", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
baseline_cost = Counter(
    "baseline_cost_usd",
    "What finished calls would have cost at the real-time rate (USD).",
    ["lane", "model", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
savings = Counter(
    "savings_usd",
    "Baseline minus actual cost of finished calls (USD).",
    ["lane", "model", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
unpriced = Counter(
    "unpriced_calls",
    "Finished calls whose model has no price in the pricing table.",
    ["lane", "model"],
    namespace=NS,
    registry=REGISTRY,
)
upstream_latency = Histogram(
    "upstream_latency_seconds",
    "Time from sending a real-time call upstream to its response headers.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
    buckets=LATENCY_BUCKETS,
)
proxy_overhead = Histogram(
    "proxy_overhead_seconds",
    "Time the router adds to a real-time call (total handling time minus upstream time).",
    namespace=NS,
    registry=REGISTRY,
    buckets=OVERHEAD_BUCKETS,
)
event_loop_lag = Histogram(
    "event_loop_lag_seconds",
    "How late the event loop woke a probe that sleeps 0.1 s: a stalled loop delays every call it serves.",
    namespace=NS,
    registry=REGISTRY,
    buckets=OVERHEAD_BUCKETS,
)
gc_pause = Histogram(
    "gc_pause_seconds",
    "Garbage-collection pauses of the serving process, by generation (2: the whole heap).",
    ["generation"],
    namespace=NS,
    registry=REGISTRY,
    buckets=OVERHEAD_BUCKETS,
)
admitted = Counter(
    "deferred_admitted",
    "Calls admitted to the deferred lane.",
    ["upstream", "model", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
batches_submitted = Counter(
    "batches_submitted",
    "Provider batches created.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
batch_lines = Counter(
    "batch_lines_submitted",
    "Calls sent inside provider batches.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
batches_finished = Counter(
    "batches_finished",
    "Provider batches that ended, by their final provider status.",
    ["upstream", "status"],
    namespace=NS,
    registry=REGISTRY,
)
batch_turnaround = Histogram(
    "batch_turnaround_seconds",
    "Time from creating a provider batch to ingesting its results.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
    buckets=TURNAROUND_BUCKETS,
)
escalations = Counter(
    "deadline_escalations",
    "Deferred calls sent to the real-time lane to keep their deadline, by reason (admission: no batch could make "
    "it; queued or submitted: by the guard) and by the tier that answered them (flex, at the batch price, or "
    "standard).",
    ["reason", "tier"],
    namespace=NS,
    registry=REGISTRY,
)
deadline_misses = Counter(
    "deadline_misses",
    "Calls answered after their deadline.",
    namespace=NS,
    registry=REGISTRY,
)
for _reason in ("admission", "queued", "submitted"):
    for _tier in ("flex", "standard"):
        # Series of rare events exist from the start, so increase() sees their first occurrence.
        escalations.labels(_reason, _tier)

late_results = Counter(
    "late_batch_results",
    "Batch results that arrived for calls already answered another way (dropped, billed by the provider).",
    namespace=NS,
    registry=REGISTRY,
)
unknown_model = Counter(
    "deferred_unknown_model",
    "Calls that would have been deferred but went real time because their model is not known (no price, not in "
    "the upstream's /models, not listed in its `models`).",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
queues_refused = Counter(
    "deferred_queues_refused",
    "Deferred calls refused with 429 because they would open a queue past `limits.max_queues`.",
    namespace=NS,
    registry=REGISTRY,
)
queue_depth = Gauge(
    "queue_depth",
    "Calls waiting to be packed into a batch (read from Redis at scrape; the same on every replica).",
    ["queue"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
batches_inflight = Gauge(
    "batches_inflight",
    "Provider batches submitted and not yet ingested (read from Redis at scrape).",
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
turnaround_estimate = Gauge(
    "turnaround_estimate_seconds",
    "A queue's batch turnaround as its model estimates it now: quantile is 0.5 or admit (batch.admit_quantile); "
    "read from Redis at scrape.",
    ["queue", "quantile"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="max",
)
turnaround_evidence = Gauge(
    "turnaround_evidence_batches",
    "Batches' worth of decayed evidence behind a queue's turnaround model (below turnaround_min_observations the "
    "prior still counts).",
    ["queue"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="max",
)
batches_cut = Counter(
    "batches_cut",
    "Batches cancelled by the router because a call in them would otherwise escalate; what they finished is "
    "harvested at the batch price.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
harvested = Counter(
    "harvested_lines",
    "Calls answered from the lines a cut batch finished before it was cancelled (batch price).",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
paid_twice = Counter(
    "paid_twice",
    "Batch lines the provider completed (and bills) for calls already answered by an escalation: double payments.",
    ["upstream"],
    namespace=NS,
    registry=REGISTRY,
)
webhook_deliveries = Counter(
    "webhook_deliveries",
    "Webhook delivery attempts, by outcome: delivered (2xx), retried (rescheduled), dropped (given up or expired).",
    ["outcome"],
    namespace=NS,
    registry=REGISTRY,
)
for _outcome in ("delivered", "retried", "dropped"):
    webhook_deliveries.labels(_outcome)
reattached = Counter(
    "deferred_reattached",
    "Requests that re-attached to a deferred call already stored (a retry after a lost connection), not billed again.",
    namespace=NS,
    registry=REGISTRY,
)
held_connections = Gauge(
    "held_connections",
    "Connections held open for a deferred answer in this process.",
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
held_refused = Counter(
    "held_refused",
    "Held calls refused with 429 before being stored, because the held-connection cap was reached.",
    namespace=NS,
    registry=REGISTRY,
)
held_cut = Counter(
    "held_cut",
    "Held answers cut short on purpose, by reason: error (the retry re-attaches and gets the error with its "
    "status), shutdown (the retry re-attaches on another replica), hold_limit.",
    ["reason"],
    namespace=NS,
    registry=REGISTRY,
)
for _reason in ("error", "shutdown", "hold_limit"):
    held_cut.labels(_reason)
tenant_limit = Gauge(
    "tenant_limit",
    "A tenant's configured limit, by kind: rpm (real-time calls a minute), max_deferred (calls), daily_budget_usd.",
    ["tenant", "limit"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
tenant_headroom = Gauge(
    "tenant_headroom",
    "What a tenant may still use of a limit now (read from Redis at scrape): calls it could make at once, deferred "
    "calls it could add, USD left today.",
    ["tenant", "limit"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
tenant_refused = Counter(
    "tenant_refused",
    "Calls refused with 429 because their tenant was over a limit (rpm, max_deferred, daily_budget_usd).",
    ["tenant", "limit"],
    namespace=NS,
    registry=REGISTRY,
)
lever_savings = Counter(
    "lever_savings_usd",
    "Savings of finished calls by lever: batch, flex, route (a cheaper model answered), prompt_cache, answer_cache "
    "(USD; net savings of a lever are this minus lever_losses_usd).",
    ["lever", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
answer_cache = Counter(
    "answer_cache",
    "The answer cache, by event: hit, miss, bypass (the caller's Cache-Control or X-Router-Cache, a call that is "
    "not deterministic, or a Redis error), stored, evicted (least recently used, past a tenant's bounds), too_large.",
    ["event", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
lever_losses = Counter(
    "lever_losses_usd",
    "What a lever cost instead of saving (USD): a cascade's cheap answer thrown away is lost on the route lever.",
    ["lever", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
losses = Counter(
    "losses_usd",
    "Calls that cost more than their baseline (USD): a cascade's thrown-away cheap call, whose baseline is 0. Net "
    "savings are savings_usd minus this.",
    ["lane", "model", "tenant"],
    namespace=NS,
    registry=REGISTRY,
)
route_decisions = Counter(
    "route_decisions",
    "Calls of a model route, by the model that answered and why (evidence, share, below_target, no_evidence, "
    "opt_out, forced, cascade_kept, cascade_escalated).",
    ["route", "model", "reason"],
    namespace=NS,
    registry=REGISTRY,
)
route_learning_cost = Counter(
    "route_learning_cost_usd",
    "What learning a model route cost: shadow calls to the cheaper model and judge calls (USD).",
    ["route", "kind"],
    namespace=NS,
    registry=REGISTRY,
)
route_cascade_seconds = Histogram(
    "route_cascade_seconds",
    "Time a cascade added to a call: the cheaper model's call and checks when the answer was escalated.",
    ["route"],
    buckets=LATENCY_BUCKETS,
    namespace=NS,
    registry=REGISTRY,
)
route_evidence = Gauge(
    "route_evidence_calls",
    "Decayed calls of evidence per model route and task (the largest tasks of each route).",
    ["route", "task"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
route_quality = Gauge(
    "route_quality_lower_bound",
    "Lower confidence bound of a task's quality ratio (candidate's mean score over the asked-for model's).",
    ["route", "task", "model"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
route_moved_share = Gauge(
    "route_moved_share",
    "Share of a model route's evidence-weighted calls its current plan moves to a cheaper model.",
    ["route"],
    namespace=NS,
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
