"""Anthropic crash recovery: how often each `orphan_policy` still pays for a Message Batch line twice.

Run from the repository root (needs the Redis at REDIS_URL, default redis://127.0.0.1:6379/0):

    python bench/orphans.py [--rounds 10] [--median-s 2] [--p95-s 6]

Every round crashes batch submissions at the dangerous point: a replica claims a queue's calls into a batch,
the provider creates the Message Batch, and the replica dies before recording its id. Scenarios: one queue;
three queues of equal size crashing together; the same with one of the three dying before its create (so two
orphans for three lapsed batches, all alike in size and time). Then the router's own batcher and poller run
(lease 0.5 s, poll 0.2 s) until every call has its batch result, against the built-in simulator (in a thread
on 127.0.0.1; batch turnarounds drawn from a lognormal, seeded by the round, so the share of an orphan's lines
that ran before a cancel varies) and real Redis (keys under `bench-<random>`, deleted at the end).

Policies: `adopt`, `adopt_or_cancel`, `cancel`, and `none` (the old behaviour: no lookup, always submit again).
Counted from the simulator's `GET /_sim/stats` after each round: lines paid twice (the sum over custom_ids of
`batch_lines_billed_by_custom_id` - 1), `max_submissions_per_custom_id`, batches created and cancelled, and the
seconds from the crash to the last result. Bounded: a round gives up after 120 s (and is reported as such).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import msgspec
from redis.asyncio import Redis

from router.core.keys import queue_tag
from router.core.pricing import PriceTable, load_pricing
from router.core.settings import BatchSettings, OrphanPolicy, Upstream
from router.deferred.batcher import Batcher
from router.deferred.poller import Poller
from router.deferred.store import Store
from router.deferred.store.records import CallMeta
from router.ops.serving import serve_in_thread
from router.providers.anthropic import AnthropicProvider
from router.providers.base import BatchLine, Found, Lapsed
from router.simulator import SimConfig, create_simulator
from router.telemetry.accounting import Accounting

ENDPOINT = "/chat/completions"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
LEASE_S = 0.5
SETTINGS = BatchSettings(max_wait_s=0.2, poll_interval_s=0.2, lease_s=LEASE_S, margin_s=1.0, turnaround_prior_s=1.0)
ROUND_LIMIT_S = 120.0
SCENARIOS: dict[str, tuple[list[int], list[bool]]] = {
    "one crash, 20 calls": ([20], [True]),
    "3 equal crashes, 10 calls each": ([10, 10, 10], [True, True, True]),
    "3 equal, 1 died before its create": ([10, 10, 10], [True, True, False]),
}
POLICIES: dict[str, OrphanPolicy] = {"none": "adopt", "adopt": "adopt", "adopt_or_cancel": "adopt_or_cancel",
                                      "cancel": "cancel"}  # fmt: skip
"""Each row's setting; `none` runs the adapter with the lookup taken out (`NoLookup`)."""


class NoLookup(AnthropicProvider):
    """The adapter as it was: a lapsed batch is never looked up, so it is always submitted again."""

    async def find_batch(self, lapsed: Lapsed) -> Found:
        return Found()


@dataclass
class Tally:
    """One (scenario, policy) over all rounds."""

    calls: int = 0
    paid_twice: list[int] = field(default_factory=list)
    max_submissions: int = 0
    created: int = 0
    cancelled: int = 0
    seconds: list[float] = field(default_factory=list)
    gave_up: int = 0


def body(model: str, i: int) -> bytes:
    return msgspec.json.encode({"model": model, "messages": [{"role": "user", "content": f"call {i}"}]})


async def crash(store: Store, provider: AnthropicProvider, sizes: Sequence[int], created: Sequence[bool]) -> list[str]:
    """Every queue claims at once, then each builder dies after the create (or before, where `created` is False)."""
    ids: list[str] = []
    now = time.time()
    for model, n in zip(MODELS, sizes, strict=False):
        meta = CallMeta(
            tenant="t", upstream="anthropic", endpoint=ENDPOINT, model=model, deadline=now + 3600, received_at=now
        )
        ids += [(await store.intake.enqueue(meta, body(model, i)))[0] for i in range(n)]
    claims = []
    for model in MODELS[: len(sizes)]:
        tag = queue_tag("anthropic", ENDPOINT, model)
        claims.append(await store.batches.claim(tag, max_requests=1000, max_bytes=10**9, owner="dead", lease_s=LEASE_S))
    for model, claim, made in zip(MODELS, claims, created, strict=False):
        assert claim is not None
        if made:
            bid, claimed = claim
            lines = [
                BatchLine(custom_id=cid, body=b, endpoint=ep) for cid, b, ep in await store.batches.bodies(claimed)
            ]
            await provider.submit_batch(bid, ENDPOINT, model, lines)
    return ids


async def all_ended(http: httpx.AsyncClient, until: float) -> bool:
    """Wait until the simulator has run every Message Batch to its end (a real provider bills them through)."""
    while time.monotonic() < until:
        listed = (await http.get("/v1/messages/batches", params={"limit": "1000"})).json()["data"]
        if all(batch["processing_status"] == "ended" for batch in listed):
            return True
        await asyncio.sleep(0.2)
    return False


async def one_round(
    redis: Redis,
    http: httpx.AsyncClient,
    pricing: PriceTable,
    policy: str,
    scenario: tuple[list[int], list[bool]],
    seed: int,
    spec: str,
    tally: Tally,
) -> None:
    (await http.post("/_sim/reset")).raise_for_status()
    knobs = {"batch_turnaround": spec, "seed": seed, "batch_cancel_delay_s": 0.2}
    (await http.post("/_sim/config", json=knobs)).raise_for_status()
    sim = str(http.base_url).rstrip("/")
    prefix = "bench-" + secrets.token_hex(4)
    store = Store(redis, prefix, result_ttl_s=600, idempotency_ttl_s=600)
    upstream = Upstream(name="anthropic", kind="anthropic", base_url=sim, orphan_policy=POLICIES[policy])
    provider = (NoLookup if policy == "none" else AnthropicProvider)(upstream, "sk-bench")
    batcher = Batcher(store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS)
    poller = Poller(
        store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS, Accounting(pricing)
    )
    try:
        started = time.monotonic()
        ids = await crash(store, provider, *scenario)
        while time.monotonic() - started < ROUND_LIMIT_S:
            await batcher.run_once()
            await poller.run_once()
            if all([await store.results.get_result(cid) is not None for cid in ids]):
                tally.seconds.append(time.monotonic() - started)
                break
            await asyncio.sleep(0.05)
        else:
            tally.gave_up += 1
        if not await all_ended(http, started + ROUND_LIMIT_S):  # orphans left running still bill to their end
            tally.gave_up += 1
    finally:
        await provider.aclose()
        keys = [k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await redis.delete(*keys)
    stats = (await http.get("/_sim/stats")).json()
    tally.calls += len(ids)
    tally.paid_twice.append(sum(n - 1 for n in stats["batch_lines_billed_by_custom_id"].values() if n > 1))
    tally.max_submissions = max(tally.max_submissions, stats["max_submissions_per_custom_id"])
    tally.created += stats["message_batches_created"]
    tally.cancelled += stats["batches_cancelled"]


async def main(args: argparse.Namespace, sim: str, pricing: PriceTable) -> None:
    spec = f"lognormal:median={args.median_s},p95={args.p95_s}"
    redis = Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    tallies: dict[tuple[str, str], Tally] = {}
    async with httpx.AsyncClient(
        base_url=sim, headers={"x-api-key": "sk-bench", "anthropic-version": "2023-06-01"}
    ) as http:
        for name, scenario in SCENARIOS.items():
            for policy in POLICIES:
                tally = tallies.setdefault((name, policy), Tally())
                for seed in range(args.rounds):
                    await one_round(redis, http, pricing, policy, scenario, seed, spec, tally)
    await redis.aclose()
    print(f"rounds: {args.rounds} per row; batch turnaround {spec}; lease {LEASE_S} s\n")
    print("| scenario | policy | calls | lines paid twice (total) | rounds paying twice | max submissions "
          "| batches created | cancelled | s to last result (median / max) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for (name, policy), t in tallies.items():
        twice = sum(t.paid_twice)
        rounds_twice = sum(1 for n in t.paid_twice if n)
        pct = 100 * twice / t.calls if t.calls else 0.0
        timing = f"{statistics.median(t.seconds):.1f} / {max(t.seconds):.1f}" if t.seconds else "-"
        if t.gave_up:
            timing += f" ({t.gave_up} gave up)"
        print(f"| {name} | {policy} | {t.calls} | {twice} ({pct:.0f} %) | {rounds_twice}/{len(t.paid_twice)} "
              f"| {t.max_submissions} | {t.created} | {t.cancelled} | {timing} |")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--median-s", type=float, default=2.0, help="median batch turnaround")
    parser.add_argument("--p95-s", type=float, default=6.0, help="95th percentile batch turnaround")
    prices = load_pricing(Path(__file__).resolve().parents[1] / "config" / "pricing.yaml")
    with serve_in_thread(create_simulator(SimConfig())) as base:
        asyncio.run(main(parser.parse_args(), base, prices))
