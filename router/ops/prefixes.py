"""The router's automatic prompt caching played over a log: the `prompt_cache` lever's projection in `estimate`.

A log line's own `cached_tokens` already paid the cached rate: that part of the lever is in the bill as logged (the
baseline is uncached, as the router books it). What the router would add is projected here, for lines that carry
their request `body`, with `core/prompt_cache.py`'s own rule: on an Anthropic upstream (`/chat/completions`,
`/messages`), each stable prefix (`candidates`: tools and system, then the leading turns) at least the model's minimum
is counted per tenant; one seen again within `prompt_cache.ttl_s` of its last sighting gets a breakpoint. The provider
side follows Anthropic's billing (and the simulator's `BreakpointCache`): the longest marked prefix still cached (its
lifetime `CACHE_TTL_S`, refreshed by every read or write, shared by the tenants of one router's key) is read at the
cached rate, the rest of the longest marked prefix is written at the write rate. So a prefix's first call pays the
plain price, its first repeat the 1.25x write, later repeats 0.1x reads.

Left as logged: OpenAI calls (OpenAI caches long prompts by itself, so the log's `cached_tokens` already show it),
calls that mark `cache_control` themselves or log cached tokens, calls a model route covers (which model answers each
one is known only in expectation), answer-cache hits (no upstream call), and calls where a policy rule's
`prompt_cache: false` or `prompt_cache.enabled: false` turns the lever off.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from rich.console import Console

from router.core import prompt_cache
from router.core.pricing import Usage
from router.core.settings import Settings
from router.ops.projection import Answered, LaneChooser, LogLine

_SHAPES: dict[str, prompt_cache.Shape] = {"/chat/completions": "chat", "/messages": "messages"}
_encoder = msgspec.json.Encoder()


class PromptCacheEstimate(msgspec.Struct, frozen=True, kw_only=True):
    """The `prompt_cache` lever's two parts per month (they add up to its savings) and the projection's calls."""

    logged_usd_month: float = 0.0
    """What the log's own `cached_tokens` saved against the uncached price: already in the bill as logged."""
    added_usd_month: float = 0.0
    """What the router's breakpoints would add on Anthropic calls with a `body` (reads' discount less writes'
    premium)."""
    marked_calls: int = 0
    """Calls the router would mark (a prefix seen again within the TTL)."""
    write_tokens: int = 0
    """Prefix tokens those calls would write to the cache (at the write rate, 1.25x input for Anthropic)."""
    read_tokens: int = 0
    """Prefix tokens those calls would read from it (at the cached rate, 0.1x input for Anthropic)."""


class Prefixes:
    """The router's prefix sightings (per tenant) and the provider's cache over a log, read in file order."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.prompt_cache.enabled
        self.ttl_s = settings.prompt_cache.ttl_s
        self._seen: dict[str, float] = {}  # the router's Redis: tenant and prefix digest -> last sighting
        self._cached: dict[str, float] = {}  # the provider's cache: model and prefix digest -> expiry
        self.marked_calls = self.write_tokens = self.read_tokens = 0

    def observe(self, line: LogLine, at: float, answered: Answered, chooser: LaneChooser, usage: Usage) -> Usage | None:
        """`usage` with the router's breakpoints on a logged call (its prefix's reads and writes); None where they
        change nothing. Records the call's sightings as the router does. An answer-cache hit never reaches the
        router's marking, nor does a call a model route covers (which model answers it is known only in
        expectation): neither is sighted."""
        body = line.body
        if body is None or answered.route is not None or answered.cache == "hit":
            return None
        decision, endpoint = chooser.decide(line, at)
        if decision.prompt_cache is False or not (decision.prompt_cache or self.enabled):
            return None
        upstream = chooser.planner.catalog.upstream_for(line.model)
        if upstream is None or upstream.kind != "anthropic" or endpoint not in _SHAPES:
            return None  # OpenAI caches by itself: the log's cached_tokens already show it
        data = _encoder.encode(body)
        if len(data) < prompt_cache.MIN_BODY_BYTES or prompt_cache.has_own_breakpoints(data):
            return None
        shape, named, tenant = _SHAPES[endpoint], str(body.get("model") or line.model), line.tenant or "default"
        found = prompt_cache.candidates(body, shape, tenant, named)
        marked = []
        for candidate in found:
            last = self._seen.get(candidate.digest)
            if last is not None and last <= at < last + self.ttl_s:
                marked.append(candidate.where)
            self._seen[candidate.digest] = at
        if not marked or usage.cached_tokens:
            return None  # unmarked, or the log already shows the call's own caching
        # The provider keys its cache by model and prefix, not by the router's tenant: one key, one cache.
        shared = {c.where: c for c in prompt_cache.candidates(body, shape, "", named)}
        read = max((shared[w].tokens for w in marked if self._cached.get(shared[w].digest, 0.0) > at), default=0)
        longest = max(shared[w].tokens for w in marked)
        for where in marked:
            self._cached[shared[where].digest] = at + prompt_cache.CACHE_TTL_S
        read = min(read, usage.input_tokens)
        written = min(longest - read, usage.input_tokens - read)
        self.marked_calls += 1
        self.read_tokens, self.write_tokens = self.read_tokens + read, self.write_tokens + written
        return msgspec.structs.replace(usage, cached_tokens=read, cache_write_tokens=written)

    def summary(self, logged_usd_month: float, added_usd_month: float) -> PromptCacheEstimate:
        return PromptCacheEstimate(
            logged_usd_month=logged_usd_month,
            added_usd_month=added_usd_month,
            marked_calls=self.marked_calls,
            write_tokens=self.write_tokens,
            read_tokens=self.read_tokens,
        )


def render(estimate: PromptCacheEstimate, usd: Callable[[float], str], console: Console) -> None:
    """One line under the levers table: the prompt cache's two parts, when it has any."""
    if not (estimate.logged_usd_month or estimate.added_usd_month or estimate.marked_calls):
        return
    text = f"prompt_cache: {usd(estimate.logged_usd_month)} a month already in the log's bill (its cached_tokens)"
    if estimate.marked_calls:
        calls, written, read = estimate.marked_calls, estimate.write_tokens, estimate.read_tokens
        text += f"; {usd(estimate.added_usd_month)} added by the router's breakpoints"
        text += f" ({calls:,} Anthropic call(s) in the log marked: {written:,} tokens written, {read:,} read)"
    text += ". OpenAI caches long prompts by itself: its cached_tokens already show it."
    console.print(text, markup=False, highlight=False)
