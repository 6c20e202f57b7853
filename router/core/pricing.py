"""Prices from config/pricing.yaml: every call is priced at the real-time rate (baseline) and at the rate paid."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from router.core.errors import ConfigError
from router.core.settings import convert, read_yaml

PriceTier = Literal["realtime", "batch", "flex"]
"""How a call is billed: the standard (real-time) rates, the batch rates, or the flex tier's."""
UsdPerMTok = Annotated[float, msgspec.Meta(ge=0)]
Multiplier = Annotated[float, msgspec.Meta(gt=0, le=1)]
Tokens = Annotated[int, msgspec.Meta(ge=0)]

# A dated snapshot (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) or a `-latest` alias costs what its model costs.
_SNAPSHOT_RE = re.compile(r"^(.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Rates(_Strict, frozen=True):
    """USD per 1M tokens in one price tier; cached input omitted means cached tokens cost the input rate."""

    input: UsdPerMTok
    output: UsdPerMTok  # required, even when 0 (embeddings): a forgotten output price must not read as free
    cached_input: UsdPerMTok | None = None


class ModelPrice(_Strict, frozen=True):
    """One model's real-time prices and how its batch and flex prices derive from them."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")]
    provider: Literal["openai", "anthropic"]
    input: UsdPerMTok
    output: UsdPerMTok
    cached_input: UsdPerMTok | None = None
    # A multiplier applies to every real-time rate, cached input included; explicit rates replace them.
    batch: Multiplier | Rates = 0.5
    flex: Multiplier | Rates | None = None  # None: the model has no flex tier
    aliases: list[str] = msgspec.field(default_factory=list)


class _PricingFile(_Strict, frozen=True):
    models: list[ModelPrice]


class Usage(msgspec.Struct, frozen=True):
    """Tokens one call used; `cached_tokens` is the part of `input_tokens` served from the prompt cache."""

    input_tokens: Tokens
    cached_tokens: Tokens = 0
    output_tokens: Tokens = 0


class Cost(msgspec.Struct, frozen=True):
    """What a call would have cost in real time, what it cost, and the difference, in USD (unrounded).

    The baseline is the model the caller asked for at the real-time rate. `route_usd` is the part of the savings a
    cheaper model answering brought (the asked-for model's real-time price of the same tokens, less the answering
    model's); the rest is the price tier's (batch or flex)."""

    baseline_usd: float
    actual_usd: float
    savings_usd: float
    route_usd: float = 0.0


def _resolve(spec: float | Rates | None, realtime: Rates) -> Rates | None:
    """A price tier's rates with `cached_input` always set: a multiplier scales every real-time rate."""
    if spec is None:
        return None
    if isinstance(spec, Rates):
        # No listed cached price (OpenAI's batch tier for gpt-4o): cached tokens pay the plain input rate.
        cached = spec.input if spec.cached_input is None else spec.cached_input
        return Rates(input=spec.input, output=spec.output, cached_input=cached)
    cached = realtime.input if realtime.cached_input is None else realtime.cached_input
    return Rates(input=realtime.input * spec, output=realtime.output * spec, cached_input=cached * spec)


class _TierRates(msgspec.Struct, frozen=True):
    realtime: Rates
    batch: Rates | None
    flex: Rates | None


def _tier_rates(price: ModelPrice) -> _TierRates:
    cached = price.input if price.cached_input is None else price.cached_input
    realtime = Rates(input=price.input, output=price.output, cached_input=cached)
    return _TierRates(realtime, _resolve(price.batch, realtime), _resolve(price.flex, realtime))


def _price(rates: Rates, usage: Usage) -> float:
    cached = min(usage.cached_tokens, usage.input_tokens)
    cached_rate = rates.input if rates.cached_input is None else rates.cached_input
    fresh = usage.input_tokens - cached
    return (fresh * rates.input + cached * cached_rate + usage.output_tokens * rates.output) / 1_000_000


class PriceTable:
    """Model prices by exact name, alias or dated snapshot; an unknown model is never guessed."""

    def __init__(self, models: list[ModelPrice] | tuple[ModelPrice, ...]) -> None:
        self.models = tuple(models)
        self._index = {name: price for price in self.models for name in (price.name, *price.aliases)}
        self._rates = {price.name: _tier_rates(price) for price in self.models}

    def lookup(self, model: str) -> ModelPrice | None:
        """The price entry for `model`, trying its undated name when the exact one is not listed."""
        price = self._index.get(model)
        if price is None and (snapshot := _SNAPSHOT_RE.match(model)):
            price = self._index.get(snapshot.group(1))
        return price

    def known(self, model: str) -> bool:
        """Whether `model` has a price."""
        return self.lookup(model) is not None

    def rates(self, model: str, tier: PriceTier) -> Rates | None:
        """Resolved rates for `model` in `tier`, or None when the model or that tier has no price."""
        price = self.lookup(model)
        return None if price is None else getattr(self._rates[price.name], tier)

    def realtime_usd(self, model: str, tokens_in: float, tokens_out: float) -> float | None:
        """What a call of `model` with these token counts costs in real time (None: unpriced)."""
        cost = self.cost(model, Usage(int(tokens_in), 0, int(tokens_out)), "realtime")
        return None if cost is None else cost.actual_usd

    def cost(self, model: str, usage: Usage, tier: PriceTier, asked: str | None = None) -> Cost | None:
        """Baseline (the asked-for model, all real time) and actual cost of one call answered by `model` at `tier`,
        or None when either model cannot be priced."""
        price = self.lookup(model)
        if price is None:
            return None
        rates = self._rates[price.name]
        paid: Rates | None = getattr(rates, tier)
        if paid is None:
            return None
        realtime, actual = _price(rates.realtime, usage), _price(paid, usage)
        baseline = realtime
        if asked is not None and asked != model:
            asked_price = self.lookup(asked)
            if asked_price is None:
                return None
            baseline = _price(self._rates[asked_price.name].realtime, usage)
        return Cost(
            baseline_usd=baseline, actual_usd=actual, savings_usd=baseline - actual, route_usd=baseline - realtime
        )


_INDEX_RE = re.compile(r"^models\[(\d+)\]")


def load_pricing(path: Path) -> PriceTable:
    """Read the price file; ConfigError names the file, the field (and model) and what was expected."""
    file = str(path)
    raw: Any = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(file, None, "expected a mapping with a `models` list at the top level")
    try:
        parsed: _PricingFile = convert(raw, _PricingFile, file)
    except ConfigError as exc:
        at = _INDEX_RE.match(exc.field or "")
        models = raw.get("models")
        if at and isinstance(models, list) and int(at.group(1)) < len(models):
            entry = models[int(at.group(1))]
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                raise ConfigError(file, exc.field, f"{exc.problem} (model {entry['name']!r})") from exc
        raise
    seen: dict[str, str] = {}
    for index, price in enumerate(parsed.models):
        for name in (price.name, *price.aliases):
            if name in seen:
                problem = f"{name!r} is already priced by model {seen[name]!r}"
                raise ConfigError(file, f"models[{index}].{'name' if name == price.name else 'aliases'}", problem)
            seen[name] = price.name
    return PriceTable(parsed.models)


class _Details(msgspec.Struct):
    cached_tokens: Tokens | None = None


class _WireUsage(msgspec.Struct):
    """Every usage shape at once: OpenAI chat/completions/embeddings, Responses API, Anthropic Messages."""

    prompt_tokens: Tokens | None = None
    completion_tokens: Tokens | None = None
    prompt_tokens_details: _Details | None = None
    input_tokens: Tokens | None = None
    output_tokens: Tokens | None = None
    input_tokens_details: _Details | None = None
    cache_read_input_tokens: Tokens | None = None
    cache_creation_input_tokens: Tokens | None = None


class _WithUsage(msgspec.Struct):
    usage: _WireUsage | None = None


_DECODER = msgspec.json.Decoder(_WithUsage)


def _usage(wire: _WireUsage) -> Usage | None:
    if wire.prompt_tokens is not None:  # chat, completions, embeddings: prompt_tokens includes cached ones
        cached = (wire.prompt_tokens_details.cached_tokens if wire.prompt_tokens_details else None) or 0
        return Usage(wire.prompt_tokens, min(cached, wire.prompt_tokens), wire.completion_tokens or 0)
    if wire.input_tokens is None:
        return None
    if wire.cache_read_input_tokens is not None or wire.cache_creation_input_tokens is not None:
        # Anthropic counts cache reads and writes apart from input_tokens; writes are priced as plain input.
        read, written = wire.cache_read_input_tokens or 0, wire.cache_creation_input_tokens or 0
        return Usage(wire.input_tokens + read + written, read, wire.output_tokens or 0)
    cached = (wire.input_tokens_details.cached_tokens if wire.input_tokens_details else None) or 0
    return Usage(wire.input_tokens, min(cached, wire.input_tokens), wire.output_tokens or 0)


def usage_from_body(body: bytes | dict[str, Any]) -> Usage | None:
    """The usage a response body reports (OpenAI or Anthropic shape), or None when it reports none."""
    try:
        parsed = _DECODER.decode(body) if isinstance(body, bytes) else msgspec.convert(body, _WithUsage)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return None if parsed.usage is None else _usage(parsed.usage)
