"""Prices: genai-prices (Pydantic's maintained price data) for real-time rates, `config/pricing.yaml` for local
overrides and what it lacks (batch and flex multipliers, which models have flex, models it does not list); every call
is priced at the real-time rate (baseline) and at the rate paid. A model priced nowhere is unpriced, never free."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from router.core.errors import ConfigError
from router.core.settings import Settings, convert, read_yaml

PriceTier = Literal["realtime", "batch", "flex"]
"""How a call is billed: the standard (real-time) rates, the batch rates, or the flex tier's."""
UsdPerMTok = Annotated[float, msgspec.Meta(ge=0)]
Multiplier = Annotated[float, msgspec.Meta(gt=0, le=1)]
Tokens = Annotated[int, msgspec.Meta(ge=0)]

# A dated snapshot (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) or a `-latest` alias costs what its model costs.
_SNAPSHOT_RE = re.compile(r"^(.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


Provider = Literal["openai", "anthropic"]
CACHE_WRITE = 1.25
"""Anthropic's 5-minute cache writes, times the input rate, where no price lists them."""
CACHE_WRITE_1H = 2.0
"""Anthropic's 1-hour cache writes, times the input rate, where no price lists them."""


class Rates(_Strict, frozen=True):
    """USD per 1M tokens in one price tier; cached input (a cache write) omitted: it costs the input rate."""

    input: UsdPerMTok
    output: UsdPerMTok  # required, even when 0 (embeddings): a forgotten output price must not read as free
    cached_input: UsdPerMTok | None = None
    cache_write: UsdPerMTok | None = None
    cache_write_1h: UsdPerMTok | None = None


class LongContext(_Strict, frozen=True):
    """Real-time rates a call pays on all its tokens once its input (cache reads and writes included) is over
    `above` tokens (Anthropic's and Google's long-context prices); a rate left out stays the model's own."""

    above: Tokens
    input: UsdPerMTok | None = None
    output: UsdPerMTok | None = None
    cached_input: UsdPerMTok | None = None
    cache_write: UsdPerMTok | None = None
    cache_write_1h: UsdPerMTok | None = None


class ModelPrice(_Strict, frozen=True):
    """One model's real-time prices and how its batch and flex prices derive from them. In the price file, a price
    left out comes from genai-prices (an entry may list only `batch`, `flex` or `aliases`); a model genai-prices does
    not know needs `input` and `output`."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")]
    provider: Provider
    input: UsdPerMTok | None = None
    output: UsdPerMTok | None = None
    cached_input: UsdPerMTok | None = None
    cache_write: UsdPerMTok | None = None
    """5-minute cache writes (Anthropic); omitted: 1.25x input for Anthropic models."""
    cache_write_1h: UsdPerMTok | None = None
    """1-hour cache writes (Anthropic); omitted: 2x input for Anthropic models."""
    # A multiplier applies to every real-time rate, cached input included; explicit rates replace them.
    batch: Multiplier | Rates = 0.5
    flex: Multiplier | Rates | None = None  # None: the model has no flex tier
    aliases: list[str] = msgspec.field(default_factory=list)
    long_context: LongContext | None = None


class _PricingFile(_Strict, frozen=True):
    models: list[ModelPrice]


class Usage(msgspec.Struct, frozen=True):
    """Tokens one call used; `cached_tokens` is the part of `input_tokens` served from the prompt cache,
    `cache_write_tokens` (`cache_write_1h_tokens`) the part written to it for 5 minutes (an hour)."""

    input_tokens: Tokens
    cached_tokens: Tokens = 0
    output_tokens: Tokens = 0
    cache_write_tokens: Tokens = 0
    cache_write_1h_tokens: Tokens = 0


class Cost(msgspec.Struct, frozen=True):
    """What a call would have cost in real time, what it cost, and the difference, in USD (unrounded).

    The baseline is the model the caller asked for at the real-time rate, uncached (every input token at the plain
    input rate). `route_usd` is the part of the savings a cheaper model answering brought (the asked-for model's
    real-time price of the same tokens, less the answering model's); `prompt_cache_usd` the prompt cache's (the
    reads' discount less the writes' premium, against the plain input rate of the price tier that answered); the
    rest is the price tier's (batch or flex). The three add up to `savings_usd`."""

    baseline_usd: float
    actual_usd: float
    savings_usd: float
    route_usd: float = 0.0
    prompt_cache_usd: float = 0.0


def _resolve(spec: float | Rates | None, realtime: Rates) -> Rates | None:
    """A price tier's rates with every rate set: a multiplier scales every real-time rate."""
    if spec is None:
        return None
    if isinstance(spec, Rates):
        # No listed cached price (OpenAI's batch tier for gpt-4o): cached tokens pay the plain input rate.
        cached = spec.input if spec.cached_input is None else spec.cached_input
        scale = spec.input / realtime.input if realtime.input else 1.0  # cache writes follow the input rate
        write = spec.cache_write if spec.cache_write is not None else (realtime.cache_write or 0.0) * scale
        write_1h = spec.cache_write_1h if spec.cache_write_1h is not None else (realtime.cache_write_1h or 0.0) * scale
        return Rates(input=spec.input, output=spec.output, cached_input=cached, cache_write=write,
                     cache_write_1h=write_1h)  # fmt: skip
    return Rates(
        input=realtime.input * spec,
        output=realtime.output * spec,
        cached_input=(realtime.cached_input or 0.0) * spec,
        cache_write=(realtime.cache_write or 0.0) * spec,
        cache_write_1h=(realtime.cache_write_1h or 0.0) * spec,
    )


class _TierRates(msgspec.Struct, frozen=True):
    realtime: Rates
    batch: Rates | None
    flex: Rates | None
    long: _TierRates | None = None
    """The rates of a call whose input is over `long_above` tokens."""
    long_above: int = 0

    def for_usage(self, usage: Usage) -> _TierRates:
        """The rates this call pays: the long-context ones when its input is over their threshold."""
        return self.long if self.long is not None and usage.input_tokens > self.long_above else self


def _tier_rates(price: ModelPrice) -> _TierRates | None:
    """The model's resolved rates per tier, or None when it has no input or output price."""
    if price.input is None or price.output is None:
        return None
    anthropic = price.provider == "anthropic"
    write = price.cache_write if price.cache_write is not None else price.input * (CACHE_WRITE if anthropic else 1)
    write_1h = price.cache_write_1h
    if write_1h is None:
        write_1h = price.input * (CACHE_WRITE_1H if anthropic else 1)
    cached = price.input if price.cached_input is None else price.cached_input
    realtime = Rates(input=price.input, output=price.output, cached_input=cached, cache_write=write,
                     cache_write_1h=write_1h)  # fmt: skip
    rates = _TierRates(realtime, _resolve(price.batch, realtime), _resolve(price.flex, realtime))
    long = price.long_context
    if long is None:
        return rates
    fields = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
    longer = msgspec.structs.replace(
        price,
        long_context=None,
        **{f: getattr(long, f) for f in fields if getattr(long, f) is not None},
    )
    over = _tier_rates(longer)
    return msgspec.structs.replace(rates, long=over, long_above=long.above) if over else rates


def _price(rates: Rates, usage: Usage) -> float:
    cached = min(usage.cached_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    written_1h = min(usage.cache_write_1h_tokens, usage.input_tokens - cached - written)
    fresh = usage.input_tokens - cached - written - written_1h
    cached_rate = rates.input if rates.cached_input is None else rates.cached_input
    write_rate = rates.input if rates.cache_write is None else rates.cache_write
    write_1h_rate = rates.input if rates.cache_write_1h is None else rates.cache_write_1h
    paid = fresh * rates.input + cached * cached_rate + written * write_rate + written_1h * write_1h_rate
    return (paid + usage.output_tokens * rates.output) / 1_000_000


Catalog = Callable[[str, "Provider | None"], "ModelPrice | None"]
"""Where prices not in the price file come from: a model's real-time prices by name (and provider, when known)."""
CATALOG_CACHE = 4096
"""Model names whose catalog look-up is kept (known and unknown alike): a bound, whatever names callers send."""
_CATALOG_PROVIDERS: tuple[Provider, ...] = ("openai", "anthropic")


def _usd(value: object) -> float | None:
    """A genai-prices price as USD per 1M tokens: a plain price, or the base of tiered prices."""
    if value is None:
        return None
    base = getattr(value, "base", value)
    return float(base)  # type: ignore[arg-type]


def _long_context(prices: object) -> LongContext | None:
    """genai-prices' first price tier (a long-context price) over every rate that has one, or None."""
    keys = {"input": "input_mtok", "output": "output_mtok", "cached_input": "cache_read_mtok",
            "cache_write": "cache_write_mtok", "cache_write_1h": "cache_write_1h_mtok"}  # fmt: skip
    above: int | None = None
    rates: dict[str, float] = {}
    for field, key in keys.items():
        tiers = getattr(getattr(prices, key, None), "tiers", None)
        if tiers:
            above = tiers[0].start if above is None else above
            if tiers[0].start == above:
                rates[field] = float(tiers[0].price)
    return None if above is None else LongContext(above=above, **rates)


def genai_prices(model: str, provider: Provider | None) -> ModelPrice | None:
    """A model's real-time prices from genai-prices (its bundled data, never fetched at run time), or None. A
    `PriceTable` keeps what it found per model name (bounded)."""
    from datetime import UTC, datetime

    from genai_prices import data_snapshot  # imported on first use: its data takes about half a second to load

    snapshot = data_snapshot.get_snapshot()
    for provider_id in (provider,) if provider else _CATALOG_PROVIDERS:
        found = next((p for p in snapshot.providers if p.id == provider_id), None)
        info = found.find_model(model) if found is not None and model else None
        if info is None:
            continue
        try:
            prices = info.get_prices(datetime.now(tz=UTC))
        except (ValueError, TypeError, AttributeError):
            return None
        input_usd = _usd(prices.input_mtok)
        if input_usd is None:
            return None  # priced per request, per second or per image only: not by token
        return ModelPrice(
            name=info.id,  # the catalog's own id: `PriceTable.listed` tells an exact name from a pattern's match
            provider=provider_id,
            input=input_usd,
            output=_usd(prices.output_mtok) or 0.0,  # genai-prices lists no output price for embeddings
            cached_input=_usd(prices.cache_read_mtok),
            cache_write=_usd(prices.cache_write_mtok),
            cache_write_1h=_usd(getattr(prices, "cache_write_1h_mtok", None)),
            long_context=_long_context(prices),
        )
    return None


def _merged(entry: ModelPrice, found: ModelPrice | None) -> ModelPrice:
    """A price file entry with the prices it leaves out taken from the catalog's."""
    if found is None:
        return entry
    fields = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
    taken: dict[str, Any] = {f: getattr(found, f) for f in fields if getattr(entry, f) is None}
    if entry.long_context is None and entry.input is None and entry.output is None:
        taken["long_context"] = found.long_context  # long-context rates only over the catalog's own base rates
    return msgspec.structs.replace(entry, **{f: v for f, v in taken.items() if v is not None})


class PriceTable:
    """Model prices: the price file's by exact name, alias or dated snapshot, then the catalog's (genai-prices);
    an unknown model is never guessed."""

    def __init__(self, models: list[ModelPrice] | tuple[ModelPrice, ...], catalog: Catalog | None = None) -> None:
        self.catalog = catalog
        self.models = tuple(
            _merged(price, catalog(price.name, price.provider) if catalog else None) for price in models
        )
        self._index = {name: price for price in self.models for name in (price.name, *price.aliases)}
        self._rates = {price.name: _tier_rates(price) for price in self.models}
        self._found: functools._lru_cache_wrapper[tuple[ModelPrice, _TierRates] | None] = functools.lru_cache(
            maxsize=CATALOG_CACHE
        )(self._from_catalog)

    def cache_size(self) -> int:
        """How many catalog look-ups are kept."""
        return self._found.cache_info().currsize

    def _from_catalog(self, model: str) -> tuple[ModelPrice, _TierRates] | None:
        price = self.catalog(model, None) if self.catalog else None
        rates = _tier_rates(price) if price else None
        return (price, rates) if price and rates else None

    def _entry(self, model: str) -> tuple[ModelPrice, _TierRates] | None:
        price = self._index.get(model)
        if price is None and (snapshot := _SNAPSHOT_RE.match(model)):
            price = self._index.get(snapshot.group(1))
        if price is not None:
            rates = self._rates[price.name]
            return (price, rates) if rates else None
        return self._found(model)

    def lookup(self, model: str) -> ModelPrice | None:
        """The price entry for `model`: the price file's (its undated name when the exact one is not listed), else
        the catalog's."""
        entry = self._entry(model)
        return entry[0] if entry else None

    def known(self, model: str) -> bool:
        """Whether `model` has a price."""
        return self._entry(model) is not None

    def listed(self, model: str) -> bool:
        """Whether `model` is a name of the price file or a model id of the catalog (its undated name, as in the
        price file), not only a name a catalog pattern accepts: genai-prices matches some families by prefix, and a
        deferred model needs queues, so the names the deferred lane takes this way must be finitely many."""
        entry = self._entry(model)
        if entry is None:
            return False
        if model in self._index or entry[0].name == model:
            return True
        snapshot = _SNAPSHOT_RE.match(model)
        return snapshot is not None and (snapshot.group(1) in self._index or snapshot.group(1) == entry[0].name)

    def rates(self, model: str, tier: PriceTier) -> Rates | None:
        """Resolved rates for `model` in `tier` (below any long-context threshold), or None when the model or that
        tier has no price."""
        entry = self._entry(model)
        return None if entry is None else getattr(entry[1], tier)

    def realtime_usd(self, model: str, tokens_in: float, tokens_out: float) -> float | None:
        """What a call of `model` with these token counts costs in real time (None: unpriced)."""
        cost = self.cost(model, Usage(int(tokens_in), 0, int(tokens_out)), "realtime")
        return None if cost is None else cost.actual_usd

    def cost(self, model: str, usage: Usage, tier: PriceTier, asked: str | None = None) -> Cost | None:
        """Baseline (the asked-for model, all real time, uncached) and actual cost of one call answered by `model` at
        `tier`, or None when either model cannot be priced."""
        entry = self._entry(model)
        if entry is None:
            return None
        rates = entry[1].for_usage(usage)
        paid: Rates | None = getattr(rates, tier)
        if paid is None:
            return None
        # Every price but `actual` is of the same tokens uncached: the baseline is what the call costs without the
        # router, and the prompt cache's part of the savings is what caching took off the tier's plain price.
        plain = Usage(usage.input_tokens, 0, usage.output_tokens)
        realtime, tier_plain, actual = _price(rates.realtime, plain), _price(paid, plain), _price(paid, usage)
        baseline = realtime
        if asked is not None and asked != model:
            asked_entry = self._entry(asked)
            if asked_entry is None:
                return None
            baseline = _price(asked_entry[1].for_usage(usage).realtime, plain)
        return Cost(
            baseline_usd=baseline,
            actual_usd=actual,
            savings_usd=baseline - actual,
            route_usd=baseline - realtime,
            prompt_cache_usd=tier_plain - actual,
        )


def unpriced_models(settings: Settings, prices: PriceTable) -> list[str]:
    """The models the settings name (upstreams' `models` without wildcards, model routes' models and judges) that
    have no price: their calls are served and deferred, counted in `unpriced_calls`, but carry no cost."""
    named = [m for u in settings.upstreams for m in u.models if not any(c in m for c in "*?[")]
    named += [m for r in settings.routes for m in (r.source, *r.to, *([r.judge] if r.judge else []))]
    return sorted({m for m in named if not prices.known(m)})


def unpriced_warning(model: str) -> str:
    """What `check-config` and startup say, once, of a model the settings name that has no price."""
    return (
        f"model {model!r} has no price (not in genai-prices nor the price file): its calls are served and "
        "deferred, but carry no cost or savings; add it to the price file to price it"
    )


_INDEX_RE = re.compile(r"^models\[(\d+)\]")


def load_pricing(path: Path, catalog: Catalog | None = genai_prices) -> PriceTable:
    """Read the price file, over the catalog's prices (genai-prices unless told); ConfigError names the file, the
    field (and model) and what was expected."""
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
    table = PriceTable(parsed.models, catalog)
    for index, price in enumerate(table.models):
        for field in ("input", "output"):
            if getattr(price, field) is None:
                problem = f"missing required field `{field}` (genai-prices does not price model {price.name!r})"
                raise ConfigError(file, f"models[{index}]", problem)
    return table


class _Details(msgspec.Struct):
    cached_tokens: Tokens | None = None


class _CacheCreation(msgspec.Struct):
    ephemeral_5m_input_tokens: Tokens | None = None
    ephemeral_1h_input_tokens: Tokens | None = None


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
    cache_creation: _CacheCreation | None = None


class _WithUsage(msgspec.Struct):
    usage: _WireUsage | None = None


_DECODER = msgspec.json.Decoder(_WithUsage)


def _usage(wire: _WireUsage) -> Usage | None:
    if wire.prompt_tokens is not None:  # chat, completions, embeddings: prompt_tokens includes cached ones
        cached = (wire.prompt_tokens_details.cached_tokens if wire.prompt_tokens_details else None) or 0
        cached = min(cached, wire.prompt_tokens)
        # An Anthropic answer translated to OpenAI's shape keeps its cache writes (part of prompt_tokens) apart.
        written = min(wire.cache_creation_input_tokens or 0, wire.prompt_tokens - cached)
        return Usage(wire.prompt_tokens, cached, wire.completion_tokens or 0, written)
    if wire.input_tokens is None:
        return None
    if wire.cache_read_input_tokens is not None or wire.cache_creation_input_tokens is not None:
        # Anthropic counts cache reads and writes apart from input_tokens; `cache_creation` splits the writes by TTL.
        read, written = wire.cache_read_input_tokens or 0, wire.cache_creation_input_tokens or 0
        hour = min((wire.cache_creation.ephemeral_1h_input_tokens or 0) if wire.cache_creation else 0, written)
        return Usage(wire.input_tokens + read + written, read, wire.output_tokens or 0, written - hour, hour)
    cached = (wire.input_tokens_details.cached_tokens if wire.input_tokens_details else None) or 0
    return Usage(wire.input_tokens, min(cached, wire.input_tokens), wire.output_tokens or 0)


def usage_from_body(body: bytes | dict[str, Any]) -> Usage | None:
    """The usage a response body reports (OpenAI or Anthropic shape), or None when it reports none."""
    try:
        parsed = _DECODER.decode(body) if isinstance(body, bytes) else msgspec.convert(body, _WithUsage)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    return None if parsed.usage is None else _usage(parsed.usage)
