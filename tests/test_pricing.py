"""Pricing: hand-computed costs per model and lane, snapshot names, cached tokens, usage shapes, file errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price
from hypothesis import given
from hypothesis import strategies as st

from router.core.errors import ConfigError
from router.core.pricing import (
    CATALOG_CACHE,
    Cost,
    ModelPrice,
    PriceTable,
    Usage,
    genai_prices,
    load_pricing,
    unpriced_models,
    unpriced_warning,
    usage_from_body,
)

SHIPPED = Path(__file__).parent.parent / "config" / "pricing.yaml"
TABLE = load_pricing(SHIPPED)
M = 1_000_000
ONE_MILLION_EACH = Usage(input_tokens=M, cached_tokens=0, output_tokens=M)


def assert_cost(cost: Cost | None, baseline: float, actual: float, cache: float = 0.0) -> None:
    """The baseline is the uncached real-time price; `cache` is the prompt cache's part of the savings."""
    assert cost is not None
    assert cost.baseline_usd == pytest.approx(baseline)
    assert cost.actual_usd == pytest.approx(actual)
    assert cost.savings_usd == pytest.approx(baseline - actual)
    assert cost.prompt_cache_usd == pytest.approx(cache, abs=1e-12)


# 1M input + 1M output tokens, no cache: real-time, batch and flex (None: no flex tier) totals in USD.
@pytest.mark.parametrize(
    ("model", "realtime", "batch", "flex"),
    [
        ("gpt-4o", 12.50, 6.25, None),
        ("gpt-4o-mini", 0.75, 0.375, None),
        ("gpt-4.1", 10.00, 5.00, None),
        ("gpt-4.1-mini", 2.00, 1.00, None),
        ("gpt-4.1-nano", 0.50, 0.25, None),
        ("gpt-5", 11.25, 5.625, 5.625),
        ("gpt-5-mini", 2.25, 1.125, 1.125),
        ("gpt-5-nano", 0.45, 0.225, 0.225),
        ("o3", 10.00, 5.00, 5.00),
        ("o4-mini", 5.50, 2.75, 2.75),
        ("claude-sonnet-4", 18.00, 9.00, None),
        ("claude-sonnet-4-5", 28.50, 14.25, None),  # 1M input is over 200k: its long-context rates, $6 and $22.50
        ("claude-sonnet-4-6", 18.00, 9.00, None),
        ("claude-opus-4-1", 90.00, 45.00, None),
        ("claude-opus-4-5", 30.00, 15.00, None),
        ("claude-opus-4-6", 30.00, 15.00, None),
        ("claude-haiku-4-5", 6.00, 3.00, None),
        ("claude-3-5-haiku", 4.80, 2.40, None),
    ],
)
def test_cost_per_model_and_lane(model: str, realtime: float, batch: float, flex: float | None) -> None:
    assert_cost(TABLE.cost(model, ONE_MILLION_EACH, "realtime"), realtime, realtime)
    assert_cost(TABLE.cost(model, ONE_MILLION_EACH, "batch"), realtime, batch)
    if flex is None:
        assert TABLE.cost(model, ONE_MILLION_EACH, "flex") is None
    else:
        assert_cost(TABLE.cost(model, ONE_MILLION_EACH, "flex"), realtime, flex)


@pytest.mark.parametrize(
    ("model", "realtime", "batch"),
    [
        ("text-embedding-3-small", 0.02, 0.01),
        ("text-embedding-3-large", 0.13, 0.065),
        ("text-embedding-ada-002", 0.10, 0.05),
    ],
)
def test_embeddings_cost(model: str, realtime: float, batch: float) -> None:
    usage = Usage(input_tokens=M)
    assert_cost(TABLE.cost(model, usage, "realtime"), realtime, realtime)
    assert_cost(TABLE.cost(model, usage, "batch"), realtime, batch)


def test_seed_batch_rates() -> None:
    expected = {
        "gpt-4o": (1.25, 5.00),
        "gpt-4o-mini": (0.075, 0.30),
        "claude-sonnet-4": (1.50, 7.50),
        "claude-3-5-haiku": (0.40, 2.00),
    }
    for model, (input_rate, output_rate) in expected.items():
        rates = TABLE.rates(model, "batch")
        assert rates is not None
        assert (rates.input, rates.output) == pytest.approx((input_rate, output_rate))


def test_small_call() -> None:
    # 1,200 prompt + 300 completion tokens on gpt-4o-mini: 1200 * 0.15e-6 + 300 * 0.60e-6 = $0.00036.
    assert_cost(TABLE.cost("gpt-4o-mini", Usage(1200, 0, 300), "batch"), 0.00036, 0.00018)


# --- cached tokens -----------------------------------------------------------------------------------------


def test_gpt_4o_batch_charges_cached_tokens_at_batch_input_rate() -> None:
    # Baseline uncached: 1M * 2.50 real time; batch: 1M * 1.25 = 1.25 (no batch cached price: no cache saving).
    assert_cost(TABLE.cost("gpt-4o", Usage(M, 400_000, 0), "batch"), 2.50, 1.25)
    # gpt-4o-mini: 1M * 0.15 real time; batch: 1M * 0.075.
    assert_cost(TABLE.cost("gpt-4o-mini", Usage(M, 400_000, 0), "batch"), 0.15, 0.075)


def test_gpt_5_batch_and_flex_halve_the_cached_rate() -> None:
    # Baseline 1M * 1.25 uncached; batch and flex: (500k fresh * 1.25 + 500k cached * 0.125) / 2 = 0.34375, of which
    # the cache took 0.625 - 0.34375 off the tier's plain price.
    for lane in ("batch", "flex"):
        assert_cost(TABLE.cost("gpt-5", Usage(M, 500_000, 0), lane), 1.25, 0.34375, 0.28125)


def test_anthropic_cache_reads_stack_with_batch() -> None:
    # Sonnet 4: 200k fresh * 3 + 800k reads * 0.30 + 100k out * 15 = 0.60 + 0.24 + 1.50 = 2.34; batch half. The
    # baseline is uncached: 3 + 1.5 = 4.5; the cache's part, 4.5 / 2 - 1.17.
    assert_cost(TABLE.cost("claude-sonnet-4", Usage(M, 800_000, 100_000), "batch"), 4.5, 1.17, 1.08)
    rates = TABLE.rates("claude-3-5-haiku", "batch")
    assert rates is not None
    assert rates.cached_input == pytest.approx(0.04)


def test_cached_tokens_beyond_input_are_capped() -> None:
    assert TABLE.cost("gpt-4o", Usage(100, 500, 0), "realtime") == TABLE.cost("gpt-4o", Usage(100, 100, 0), "realtime")


def test_zero_usage_costs_nothing() -> None:
    assert TABLE.cost("gpt-4o", Usage(0), "batch") == Cost(0.0, 0.0, 0.0)


@given(
    fresh=st.integers(0, 10**7),
    cached=st.integers(0, 10**7),
    output=st.integers(0, 10**7),
    model=st.sampled_from([m.name for m in TABLE.models]),
)
def test_costs_are_non_negative_and_realtime_saves_only_by_the_cache(
    fresh: int, cached: int, output: int, model: str
) -> None:
    usage = Usage(fresh + cached, cached, output)
    realtime = TABLE.cost(model, usage, "realtime")
    batch = TABLE.cost(model, usage, "batch")
    assert realtime is not None and batch is not None
    assert realtime.savings_usd == pytest.approx(realtime.prompt_cache_usd)  # in real time only the cache saves
    assert realtime.route_usd == 0
    assert realtime.baseline_usd == batch.baseline_usd >= 0
    assert batch.actual_usd >= 0


# --- model names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "model"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("o3-2025-04-16", "o3"),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-sonnet-4-20250514", "claude-sonnet-4"),
        ("claude-sonnet-4-0", "claude-sonnet-4"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
    ],
)
def test_snapshots_match_their_model(alias: str, model: str) -> None:
    price = TABLE.lookup(alias)
    assert price is not None
    assert price.name == model
    assert TABLE.cost(alias, ONE_MILLION_EACH, "batch") == TABLE.cost(model, ONE_MILLION_EACH, "batch")


def test_mini_is_not_gpt_4o() -> None:
    mini, full = TABLE.lookup("gpt-4o-mini"), TABLE.lookup("gpt-4o")
    assert mini is not None and full is not None
    assert mini.name == "gpt-4o-mini"
    assert TABLE.cost("gpt-4o-mini", ONE_MILLION_EACH, "realtime") != TABLE.cost("gpt-4o", ONE_MILLION_EACH, "realtime")


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o-2024",
        "gpt-99",
        "claude-sonnet-4-7",
        "my-local-model",
        "",
        "x",
    ],
)
def test_unknown_models_are_never_guessed(model: str) -> None:
    assert not TABLE.known(model)
    assert TABLE.cost(model, ONE_MILLION_EACH, "realtime") is None
    assert TABLE.rates(model, "batch") is None


def test_known() -> None:
    assert TABLE.known("gpt-4o")
    assert TABLE.known("claude-sonnet-4-20250514")


def test_providers() -> None:
    providers = {m.name: m.provider for m in TABLE.models}
    assert providers["gpt-4o"] == "openai"
    assert providers["claude-haiku-4-5"] == "anthropic"


# --- usage shapes ------------------------------------------------------------------------------------------

CHAT = {
    "object": "chat.completion",
    "usage": {
        "prompt_tokens": 1200,
        "completion_tokens": 300,
        "total_tokens": 1500,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}
EMBEDDINGS = {"object": "list", "data": [], "usage": {"prompt_tokens": 8, "total_tokens": 8}}
RESPONSES = {
    "object": "response",
    "usage": {
        "input_tokens": 500,
        "input_tokens_details": {"cached_tokens": 128},
        "output_tokens": 40,
        "output_tokens_details": {"reasoning_tokens": 10},
        "total_tokens": 540,
    },
}
ANTHROPIC = {
    "type": "message",
    "usage": {
        "input_tokens": 20,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 2000,
        "output_tokens": 50,
        "service_tier": "batch",
    },
}
ANTHROPIC_NO_CACHE = {"type": "message", "usage": {"input_tokens": 20, "output_tokens": 50}}


@pytest.mark.parametrize(
    ("body", "usage"),
    [
        (CHAT, Usage(1200, 1024, 300)),
        ({"usage": {"prompt_tokens": 10, "completion_tokens": 2}}, Usage(10, 0, 2)),
        ({"usage": {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": None}}, Usage(10, 0, 2)),
        (EMBEDDINGS, Usage(8, 0, 0)),
        (RESPONSES, Usage(500, 128, 40)),
        (ANTHROPIC, Usage(2120, 2000, 50, cache_write_tokens=100)),
        (
            {
                "usage": {
                    "input_tokens": 4,
                    "cache_creation_input_tokens": 30,
                    "output_tokens": 1,
                    "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 20},
                }
            },
            Usage(34, 0, 1, cache_write_tokens=10, cache_write_1h_tokens=20),
        ),
        (ANTHROPIC_NO_CACHE, Usage(20, 0, 50)),
        ({"usage": {"input_tokens": 5, "cache_read_input_tokens": None, "output_tokens": 1}}, Usage(5, 0, 1)),
    ],
)
def test_usage_shapes(body: dict[str, Any], usage: Usage) -> None:
    assert usage_from_body(body) == usage
    assert usage_from_body(json.dumps(body).encode()) == usage


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"choices": []}',
        b'{"usage": null}',
        b'{"usage": {}}',
        b'{"usage": {"prompt_tokens": -1}}',
        b'{"usage": {"prompt_tokens": "12"}}',
        b'{"usage": {"completion_tokens": 3}}',
    ],
)
def test_no_usage(body: bytes) -> None:
    assert usage_from_body(body) is None


@given(st.binary(max_size=200))
def test_usage_from_junk_never_raises(junk: bytes) -> None:
    result = usage_from_body(junk)
    assert result is None or isinstance(result, Usage)


# --- the price file ----------------------------------------------------------------------------------------


def write(tmp_path: Path, *entries: str) -> Path:
    """A price file with one `models` entry per flow mapping given."""
    path = tmp_path / "pricing.yaml"
    path.write_text("models:\n" + "".join(f"  - {{{entry}}}\n" for entry in entries), encoding="utf-8")
    return path


BASE = "name: m, provider: openai, input: 1, output: 1"


@pytest.mark.parametrize(
    ("entries", "field", "problem"),
    [
        ((BASE, "name: gpt-x, provider: openai, input: cheap, output: 1"), "models[1].input", "model 'gpt-x'"),
        (("name: m, provider: azure, input: 1, output: 1",), "models[0].provider", "Invalid enum value 'azure'"),
        (("name: m, provider: openai, input: -1, output: 1",), "models[0].input", ">= 0"),
        ((f"{BASE}, batch: 2",), "models[0].batch", "<= 1"),
        ((f"{BASE}, batch: {{inpt: 1}}",), "models[0].batch", "inpt"),
        ((f"{BASE}, batch: {{input: 1}}",), "models[0].batch", "missing required field `output`"),
        ((f"{BASE}, price: 3",), "models[0]", "unknown field `price`"),
        (("name: m, provider: openai, output: 1",), "models[0]", "missing required field `input`"),
        (("name: m, provider: openai, input: 1",), "models[0]", "missing required field `output`"),
        ((BASE, BASE), "models[1].name", "'m' is already priced"),
        ((BASE, "name: n, provider: openai, input: 2, output: 1, aliases: [m]"), "models[1].aliases", "already priced"),
    ],
)
def test_broken_pricing_file(tmp_path: Path, entries: tuple[str, ...], field: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_pricing(write(tmp_path, *entries))
    assert info.value.field == field
    assert problem in str(info.value)
    assert "pricing.yaml" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("prices: []\n", "unknown field `prices`"), ("", "expected a mapping"), ("models: [\n", "not valid YAML")],
)
def test_broken_pricing_file_shape(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "pricing.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_pricing(path)
    assert info.value.field is None
    assert problem in str(info.value)


def test_missing_pricing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_pricing(tmp_path / "absent.yaml")


def test_explicit_rates_and_multipliers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BASE,
        "name: e, provider: anthropic, input: 4, cached_input: .4, output: 8, batch: 0.25, flex: {input: 3, output: 6}",
        "name: x, provider: openai, input: 4, output: 8, batch: {input: 1, cached_input: 0.1, output: 2}",
    )
    table = load_pricing(path)
    assert isinstance(table, PriceTable)
    assert_cost(table.cost("m", ONE_MILLION_EACH, "batch"), 2.0, 1.0)
    # e: baseline 2M * 4 + 8 = 16 uncached; batch (4 + 0.4 + 8) / 4 = 3.1, the cache's part 16 / 4 - 3.1.
    assert_cost(table.cost("e", Usage(2 * M, M, M), "batch"), 16.0, 3.1, 0.9)
    # An explicit block without cached_input charges cached tokens at its own input rate: 3 + 3 + 6.
    assert_cost(table.cost("e", Usage(2 * M, M, M), "flex"), 16.0, 12.0)
    # x lists no real-time cached price: the baseline charges cached tokens at the input rate (4), batch at 0.1.
    assert_cost(table.cost("x", Usage(M, M // 2, 0), "batch"), 4.0, 0.55, 0.45)


# --- genai-prices as the source ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [("gpt-4o", "openai"), ("gpt-3.5-turbo-instruct", "openai"), ("claude-sonnet-4", "anthropic")],
)
def test_prices_match_genai_prices_own_calc(model: str, provider: str) -> None:
    """With no price file entry, a model genai-prices knows costs what the package's own calc says."""
    table = PriceTable([], genai_prices)
    usage = Usage(input_tokens=12_000, cached_tokens=2_000, output_tokens=3_000)
    cost = table.cost(model, usage, "realtime")
    theirs = calc_price(
        GenaiUsage(input_tokens=12_000, cache_read_tokens=2_000, output_tokens=3_000), model, provider_id=provider
    )
    assert cost is not None
    assert cost.actual_usd == pytest.approx(float(theirs.total_price), rel=1e-12)
    batch = table.cost(model, usage, "batch")  # the providers' 50% batch discount, from the default multiplier
    assert batch is not None and batch.actual_usd == pytest.approx(cost.actual_usd / 2, rel=1e-12)


def test_gpt_3_5_turbo_instruct_is_priced_with_no_hand_edit() -> None:
    assert TABLE.lookup("gpt-3.5-turbo-instruct") is not None
    assert_cost(TABLE.cost("gpt-3.5-turbo-instruct", ONE_MILLION_EACH, "batch"), 3.50, 1.75)  # $1.50 in, $2 out


def test_an_override_in_the_price_file_wins(tmp_path: Path) -> None:
    table = load_pricing(write(tmp_path, "name: gpt-4o, provider: openai, input: 1, output: 2, flex: 0.5"))
    assert_cost(table.cost("gpt-4o", ONE_MILLION_EACH, "flex"), 3.0, 1.5)
    # Left out of the entry, the cache read price is genai-prices' own ($1.25 for gpt-4o).
    rates = table.rates("gpt-4o", "realtime")
    assert rates is not None and rates.cached_input == pytest.approx(1.25)


def test_an_entry_may_list_only_what_genai_prices_lacks(tmp_path: Path) -> None:
    table = load_pricing(write(tmp_path, "name: gpt-3.5-turbo-instruct, provider: openai, flex: 0.5, aliases: [i]"))
    assert_cost(table.cost("i", ONE_MILLION_EACH, "flex"), 3.50, 1.75)


def test_an_unknown_model_is_unpriced_not_free() -> None:
    for model in ("my-local-model", "gpt-99"):
        assert not TABLE.known(model)
        assert TABLE.cost(model, ONE_MILLION_EACH, "realtime") is None
        assert TABLE.realtime_usd(model, 1000, 1000) is None
        assert TABLE.cost("gpt-4o", ONE_MILLION_EACH, "realtime", asked=model) is None  # nor as a baseline


def test_anthropic_cache_writes_cost_their_real_rate() -> None:
    # claude-sonnet-4: 100k fresh * 3 + 200k 5-minute writes * 3.75 + 300k 1-hour writes * 6 + 400k reads * 0.30
    # = 0.30 + 0.75 + 1.80 + 0.12 = 2.97; no output. Batch halves every rate, writes included.
    usage = Usage(M, 400_000, 0, cache_write_tokens=200_000, cache_write_1h_tokens=300_000)
    # The baseline is uncached (1M * 3); the cache's part is the batch tier's plain price less what was paid.
    assert_cost(TABLE.cost("claude-sonnet-4", usage, "batch"), 3.0, 1.485, 0.015)
    # A price file entry that lists no write price: 1.25x (5 minutes) and 2x (1 hour) its input rate.
    table = PriceTable([ModelPrice(name="c", provider="anthropic", input=2.0, output=4.0)])
    # 500k 5-minute writes * 2.50 + 500k 1-hour writes * 4 = 1.25 + 2.00.
    writes = Usage(M, 0, 0, cache_write_tokens=M // 2, cache_write_1h_tokens=M // 2)
    assert_cost(table.cost("c", writes, "realtime"), 2.0, 3.25, -1.25)
    body = {"usage": {"input_tokens": 0, "cache_creation_input_tokens": M, "output_tokens": 0}}
    parsed = usage_from_body(body)
    assert parsed is not None
    assert_cost(TABLE.cost("claude-sonnet-4", parsed, "realtime"), 3.0, 3.75, -0.75)


def test_catalog_look_ups_are_kept_and_bounded() -> None:
    asked: list[str] = []

    def catalog(model: str, provider: str | None) -> ModelPrice | None:
        asked.append(model)
        return ModelPrice(name=model, provider="openai", input=1.0, output=1.0) if model == "known" else None

    table = PriceTable([], catalog)
    for _ in range(3):
        assert table.known("known") and not table.known("unknown")
    assert asked == ["known", "unknown"]
    for index in range(CATALOG_CACHE + 10):
        table.known(f"m{index}")
    assert table.cache_size() <= CATALOG_CACHE


def test_only_exact_names_are_listed_for_the_deferred_lane() -> None:
    """genai-prices matches some families by prefix: such a name is priced, but the deferred lane (which keeps
    queues per model) takes only the finitely many exact names."""
    assert TABLE.known("claude-sonnet-4-5-x1y2z3") and not TABLE.listed("claude-sonnet-4-5-x1y2z3")
    for model in ("gpt-3.5-turbo-instruct", "gpt-4o", "gpt-4o-2024-08-06", "claude-sonnet-4-20250514", "o1-pro"):
        assert TABLE.listed(model), model
    assert not TABLE.listed("sim-local-model")


def test_the_settings_unpriced_models_are_named_once() -> None:
    from router.core.settings import Settings, Upstream

    upstreams = [
        Upstream(name="a", base_url="http://127.0.0.1:9/v1", models=["sim-x", "gpt-4o", "llama-*", "sim-x"]),
        Upstream(name="b", base_url="http://127.0.0.1:9/v1", models=["sim-y"]),
    ]
    assert unpriced_models(Settings(upstreams=upstreams), TABLE) == ["sim-x", "sim-y"]
    assert "'sim-x' has no price" in unpriced_warning("sim-x")


@pytest.mark.parametrize("input_tokens", [150_000, 250_000])
def test_long_context_prices_match_genai_prices(input_tokens: int) -> None:
    """claude-sonnet-4-5 pays higher rates on all of a call's tokens once its input is over 200k tokens."""
    usage = Usage(input_tokens=input_tokens, cached_tokens=20_000, output_tokens=4_000, cache_write_tokens=10_000)
    theirs = calc_price(
        GenaiUsage(input_tokens=input_tokens, cache_read_tokens=20_000, cache_write_tokens=10_000, output_tokens=4_000),
        "claude-sonnet-4-5",
        provider_id="anthropic",
    )
    for table in (TABLE, PriceTable([], genai_prices)):
        cost = table.cost("claude-sonnet-4-5", usage, "realtime")
        assert cost is not None
        assert cost.actual_usd == pytest.approx(float(theirs.total_price), rel=1e-12)
        batch = table.cost("claude-sonnet-4-5", usage, "batch")
        assert batch is not None and batch.actual_usd == pytest.approx(cost.actual_usd / 2, rel=1e-12)


def test_a_long_context_price_in_the_price_file(tmp_path: Path) -> None:
    table = load_pricing(write(tmp_path, f"{BASE}, long_context: {{above: 100, input: 3}}"))
    assert_cost(table.cost("m", Usage(100, 0, 100), "realtime"), 0.0002, 0.0002)  # at the threshold: base rates
    assert_cost(table.cost("m", Usage(101, 0, 100), "batch"), 0.000403, 0.0002015)  # over it: input at $3
