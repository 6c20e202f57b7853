"""Price a finished call from its usage and book it in the metrics, once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from router.core.lanes import LEVERS, Origin, lever_split
from router.core.pricing import Cost, PriceTable, Usage, usage_from_body
from router.telemetry import metrics

if TYPE_CHECKING:
    from router.core.pricing import PriceTier

_PRICE_TIER: dict[Origin, PriceTier] = {
    Origin.REALTIME: "realtime",
    Origin.ESCALATED: "realtime",
    Origin.BATCH: "batch",
    Origin.FLEX: "flex",
    Origin.NATIVE: "batch",
    Origin.CACHE: "realtime",
}
"""The price tier an answer of each origin is billed at (an answer from the answer cache: its baseline's, since it
costs nothing itself)."""
__all__ = ["LEVERS", "Accounting", "Priced", "levers"]


class Priced(msgspec.Struct, frozen=True):
    """A call's usage and cost (None where the usage or the model's price is unknown)."""

    usage: Usage | None
    cost: Cost | None

    @property
    def route_usd(self) -> float:
        """The model route's part of the savings (0 when unpriced)."""
        return self.cost.route_usd if self.cost else 0.0

    @property
    def prompt_cache_usd(self) -> float:
        """The prompt cache's part of the savings (0 when unpriced)."""
        return self.cost.prompt_cache_usd if self.cost else 0.0

    def as_tuple(self) -> tuple[float, float, float] | None:
        """(actual, baseline, savings) for storage."""
        c = self.cost
        return (c.actual_usd, c.baseline_usd, c.savings_usd) if c else None


class Accounting:
    """Turns response bodies into costs and costs into metrics."""

    def __init__(self, prices: PriceTable) -> None:
        self.prices = prices

    def price(
        self, model: str, origin: Origin, body: bytes, usage: Usage | None = None, *, asked: str | None = None
    ) -> Priced:
        """Usage from the body (unless given) priced at its origin's price tier, and at the real-time rate of the
        model the caller asked for (`asked`, when a model route had another model answer)."""
        usage = usage or usage_from_body(body)
        if usage is None:
            return Priced(None, None)
        cost = self.prices.cost(model, usage, _PRICE_TIER[origin], asked)
        if origin is Origin.CACHE and cost is not None:
            # Served from the answer cache: nothing paid, and all of what the answer costs in real time saved.
            cost = Cost(baseline_usd=cost.baseline_usd, actual_usd=0.0, savings_usd=cost.baseline_usd)
        return Priced(usage, cost)

    def book(self, priced: Priced, *, origin: Origin, upstream: str, model: str, tenant: str, outcome: str) -> None:
        """Count one finished call in the Prometheus metrics (its origin is their `lane` label); once per call."""
        lane = origin.value
        metrics.requests.labels(lane, upstream, model, tenant, outcome).inc()
        usage = priced.usage
        if usage is None:
            return
        metrics.tokens.labels(lane, model, "input").inc(usage.input_tokens - usage.cached_tokens)
        metrics.tokens.labels(lane, model, "cached_input").inc(usage.cached_tokens)
        metrics.tokens.labels(lane, model, "output").inc(usage.output_tokens)
        cost = priced.cost
        if cost is None:
            metrics.unpriced.labels(lane, model).inc()
            return
        metrics.cost.labels(lane, model, tenant).inc(cost.actual_usd)
        metrics.baseline_cost.labels(lane, model, tenant).inc(cost.baseline_usd)
        # Counters only grow: a call that saved a negative amount (a cascade's thrown-away cheap call) is counted
        # as lost; net savings are savings minus losses, in every report.
        if cost.savings_usd >= 0:
            metrics.savings.labels(lane, model, tenant).inc(cost.savings_usd)
        else:
            metrics.losses.labels(lane, model, tenant).inc(-cost.savings_usd)
        for lever, usd in levers(origin, cost).items():
            (metrics.lever_savings if usd >= 0 else metrics.lever_losses).labels(lever, tenant).inc(abs(usd))


def levers(origin: Origin, cost: Cost) -> dict[str, float]:
    """A call's savings by lever: the model route's part, the prompt cache's, and its price tier's (batch, flex)."""
    return lever_split(origin, cost.savings_usd, cost.route_usd, cost.prompt_cache_usd)
