"""Message Batches orphaned by a crash: told apart without metadata, adopted, waited for or cancelled, paid once."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence

import anthropic
import msgspec
import pytest
from redis.asyncio import Redis

from router.core.keys import queue_tag
from router.core.pricing import load_pricing
from router.core.settings import BatchSettings, OrphanPolicy, Upstream
from router.deferred.batcher import Batcher
from router.deferred.poller import Poller
from router.deferred.store import Store
from router.deferred.store.records import CallMeta
from router.providers import anthropic as adapter
from router.providers.anthropic import AnthropicProvider
from router.providers.anthropic_orphans import SKEW_S, Candidate, Verdict, judge
from router.providers.base import BatchLine, Found, Lapsed, Ledger, Rival
from router.telemetry.accounting import Accounting
from tests.helpers.servers import ROOT, Sim
from tests.helpers.waiting import wait_until, wait_until_async

ENDPOINT = "/chat/completions"
MODELS = ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
LEASE = 0.3
SETTINGS = BatchSettings(max_wait_s=0.1, poll_interval_s=0.1, lease_s=LEASE, margin_s=1.0, turnaround_prior_s=1.0)
POLICIES: tuple[OrphanPolicy, ...] = ("adopt", "cancel", "adopt_or_cancel")

# --- the decision on running candidates, as a table ------------------------------------------------------------

T = 1_000_000.0
ONE = Candidate(id="m1", created_at=T, requests=5)
TWO = Candidate(id="m2", created_at=T + 1, requests=5)
LAPSED_RIVAL = Rival(claimed_at=T - 1, requests=5, live=False)
LIVE_RIVAL = Rival(claimed_at=T - 1, requests=5, live=True)


JUDGE_CASES: list[tuple[str, OrphanPolicy, list[Candidate], list[Rival], bool, Verdict]] = [
    ("nothing to judge", "adopt", [], [LIVE_RIVAL], True, Verdict()),
    ("one, uncontested", "adopt", [ONE], [], True, Verdict(adopt="m1")),
    ("one, uncontested", "adopt_or_cancel", [ONE], [], True, Verdict(adopt="m1")),
    ("cancel never adopts on size and time", "cancel", [ONE], [], True, Verdict(cancel=("m1",))),
    ("listing cut short", "adopt", [ONE], [], False, Verdict(wait=True)),
    ("listing cut short", "adopt_or_cancel", [ONE], [], False, Verdict(cancel=("m1",))),
    ("two alike", "adopt", [ONE, TWO], [], True, Verdict(wait=True)),
    ("two alike", "adopt_or_cancel", [ONE, TWO], [], True, Verdict(cancel=("m1", "m2"))),
    ("a crashed rival could own it", "adopt", [ONE], [LAPSED_RIVAL], True, Verdict(wait=True)),
    ("a crashed rival could own it", "adopt_or_cancel", [ONE], [LAPSED_RIVAL], True, Verdict(cancel=("m1",))),
    ("a live builder may record it", "adopt_or_cancel", [ONE], [LIVE_RIVAL], True, Verdict()),
    ("a live builder may record it", "cancel", [ONE, TWO], [LIVE_RIVAL], True, Verdict()),
    (
        "a rival claimed after it was created",
        "adopt",
        [ONE],
        [Rival(claimed_at=T + SKEW_S + 1, requests=5, live=True)],
        True,
        Verdict(adopt="m1"),
    ),
    (
        "a rival too small for it",
        "adopt",
        [ONE],
        [Rival(claimed_at=T - 1, requests=4, live=True)],
        True,
        Verdict(adopt="m1"),
    ),
    (
        "already being cancelled",
        "cancel",
        [ONE, msgspec.structs.replace(TWO, canceling=True)],
        [],
        True,
        Verdict(cancel=("m1",)),
    ),
]


@pytest.mark.parametrize(
    ("case", "policy", "running", "rivals", "complete", "verdict"),
    JUDGE_CASES,
    ids=[f"{c[1]}: {c[0]}" for c in JUDGE_CASES],
)
def test_judge(
    case: str, policy: OrphanPolicy, running: list[Candidate], rivals: list[Rival], complete: bool, verdict: Verdict
) -> None:
    assert judge(policy, running, rivals, complete) == verdict, case


# --- crashes at the dangerous point, against real Redis and the simulator's Message Batches ---------------------


@pytest.fixture
async def store(redis_url: str, key_prefix: str) -> AsyncIterator[Store]:
    redis = Redis.from_url(redis_url)
    yield Store(redis, key_prefix, result_ttl_s=600, idempotency_ttl_s=600)
    await redis.aclose()


def make(sim: Sim, policy: OrphanPolicy = "adopt") -> AnthropicProvider:
    return AnthropicProvider(Upstream(name="anthropic", kind="anthropic", base_url=sim.base, orphan_policy=policy), "k")


def body(model: str, i: int) -> bytes:
    return msgspec.json.encode({"model": model, "messages": [{"role": "user", "content": f"call {i}"}]})


async def admit(store: Store, model: str, n: int) -> list[str]:
    now = time.time()
    meta = CallMeta(
        tenant="t", upstream="anthropic", endpoint=ENDPOINT, model=model, deadline=now + 3600, received_at=now
    )
    return [(await store.intake.enqueue(meta, body(model, i)))[0] for i in range(n)]


async def claim(store: Store, model: str, owner: str, lease_s: float = LEASE) -> tuple[str, list[str]]:
    claimed = await store.batches.claim(
        queue_tag("anthropic", ENDPOINT, model), max_requests=1000, max_bytes=10**9, owner=owner, lease_s=lease_s
    )
    assert claimed is not None
    return claimed


async def create(store: Store, provider: AnthropicProvider, model: str, bid: str, ids: list[str]) -> str:
    """What the dying builder got done: the provider created the batch (its id is never recorded)."""
    lines = [BatchLine(custom_id=cid, body=b, endpoint=ep) for cid, b, ep in await store.batches.bodies(ids)]
    return await provider.submit_batch(bid, ENDPOINT, model, lines)


async def crash(store: Store, provider: AnthropicProvider, sizes: Sequence[int], created: Sequence[bool]) -> list[str]:
    """One queue per size claims its calls at once, then each builder dies, after creating its batch or before."""
    ids = [await admit(store, model, n) for model, n in zip(MODELS, sizes, strict=False)]
    claims = [await claim(store, model, "dead-replica") for model in MODELS[: len(sizes)]]
    for model, (bid, claimed), made in zip(MODELS, claims, created, strict=False):
        if made:
            await create(store, provider, model, bid, claimed)
    return [cid for group in ids for cid in group]


async def settle(store: Store, provider: AnthropicProvider, ids: list[str], seconds: float = 30.0) -> int:
    """Run the batcher and the poller until every call has its batch result (bounded); the batches submitted."""
    providers = {"anthropic": provider}
    batcher = Batcher(store.queues, store.batches, store.results, store.leases, providers, SETTINGS)
    poller = Poller(
        store.queues,
        store.batches,
        store.results,
        store.leases,
        providers,
        SETTINGS,
        Accounting(load_pricing(ROOT / "config" / "pricing.yaml")),
    )
    submitted = 0

    async def answered() -> bool:
        nonlocal submitted
        submitted += await batcher.run_once()
        await poller.run_once()
        return all([await store.results.get_result(cid) is not None for cid in ids])

    await wait_until_async(answered, seconds, "every call's batch result")
    results = [await store.results.get_result(cid) for cid in ids]
    assert all(r is not None and r.status == 200 and r.origin == "batch" for r in results)
    return submitted


async def leases_run_out(store: Store, owner: str = "dead-replica") -> None:
    """Wait until the leases `owner` holds on batches it was building have run out, as Redis records them."""

    async def run_out() -> bool:
        return all(until < time.time() for _, record, until in await store.batches.building() if record.owner == owner)

    await wait_until_async(run_out, 10, f"the leases of {owner} to run out", every=0.02)


def paid_twice(sim: Sim) -> int:
    """Batch lines the provider ran (and bills) more than once."""
    return sum(n - 1 for n in sim.stats()["batch_lines_billed_by_custom_id"].values() if n > 1)


@pytest.fixture
async def provider(sim: Sim, request: pytest.FixtureRequest) -> AsyncIterator[AnthropicProvider]:
    p = make(sim, getattr(request, "param", "adopt"))
    yield p
    await p.aclose()


@pytest.mark.integration
@pytest.mark.parametrize("provider", POLICIES, indirect=True)
async def test_a_crash_before_the_create_submits_once(store: Store, provider: AnthropicProvider, sim: Sim) -> None:
    ids = await crash(store, provider, [5], created=[False])
    await leases_run_out(store)
    assert await settle(store, provider, ids) == 1
    stats = sim.stats()
    assert stats["message_batches_created"] == 1 and stats["max_submissions_per_custom_id"] == 1
    assert stats["batches_cancelled"] == 0


@pytest.mark.integration
@pytest.mark.parametrize("provider", ["adopt", "adopt_or_cancel"], indirect=True)
async def test_the_one_orphan_that_fits_is_adopted(store: Store, provider: AnthropicProvider, sim: Sim) -> None:
    sim.configure(batch_turnaround_s=3.0)  # still running when recovery looks
    ids = await crash(store, provider, [5], created=[True])
    await leases_run_out(store)
    assert await settle(store, provider, ids) == 0
    stats = sim.stats()
    assert stats["message_batches_created"] == 1 and stats["max_submissions_per_custom_id"] == 1
    assert stats["batches_cancelled"] == 0 and paid_twice(sim) == 0
    assert stats["message_batch_requests_billed"] == 5


@pytest.mark.integration
@pytest.mark.parametrize("provider", ["cancel"], indirect=True)
async def test_cancel_cancels_the_running_orphan_and_submits_again(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0, batch_cancel_delay_s=0.1)
    ids = await crash(store, provider, [5], created=[True])
    await leases_run_out(store)
    assert await settle(store, provider, ids) == 1
    stats = sim.stats()
    assert stats["message_batches_created"] == 2 and stats["batches_cancelled"] == 1
    # Only the lines the orphan ran before the cancel are paid twice.
    assert paid_twice(sim) == stats["message_batch_requests_billed"] - 5 < 5


@pytest.mark.integration
@pytest.mark.parametrize("provider", POLICIES, indirect=True)
async def test_an_orphan_that_already_ended_is_proven_by_its_results(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=0.05)
    ids = await crash(store, provider, [5, 5], created=[True, True])  # alike in size and time: only results tell
    await leases_run_out(store)
    with anthropic.Anthropic(base_url=sim.base, api_key="k", max_retries=0) as client:
        ended = lambda: all(b.processing_status == "ended" for b in client.messages.batches.list())  # noqa: E731
        wait_until(ended, 10, "both orphans to end")
    assert await settle(store, provider, ids) == 0
    stats = sim.stats()
    assert stats["message_batches_created"] == 2 and stats["batches_cancelled"] == 0 and paid_twice(sim) == 0


@pytest.mark.integration
async def test_concurrent_equal_crashes_wait_for_proof_and_pay_once(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0)
    ids = await crash(store, provider, [4, 4, 4], created=[True, True, False])
    await leases_run_out(store)
    batcher = Batcher(store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS)
    assert await batcher.run_once() == 0  # three alike, two orphans: nobody can tell yet, nothing is submitted
    assert sim.stats()["message_batches_created"] == 2
    assert await settle(store, provider, ids) == 1  # the queue that crashed before its create submits, once ended
    stats = sim.stats()
    assert stats["message_batches_created"] == 3 and stats["max_submissions_per_custom_id"] == 1
    assert stats["batches_cancelled"] == 0 and paid_twice(sim) == 0


@pytest.mark.integration
@pytest.mark.parametrize("provider", ["cancel", "adopt_or_cancel"], indirect=True)
async def test_concurrent_equal_crashes_cancel_what_cannot_be_told_apart(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0, batch_cancel_delay_s=0.1)
    ids = await crash(store, provider, [4, 4, 4], created=[True, True, True])
    await leases_run_out(store)
    await settle(store, provider, ids)
    stats = sim.stats()
    assert stats["batches_cancelled"] == 3 and stats["max_submissions_per_custom_id"] == 2
    assert paid_twice(sim) < 12  # lines that ran before their cancel, no more


@pytest.mark.integration
async def test_a_batch_a_live_builder_has_not_recorded_yet_is_left_to_it(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0)
    crashed = await admit(store, MODELS[0], 3)
    await claim(store, MODELS[0], "dead-replica")  # dies before creating anything
    live_ids = await admit(store, MODELS[1], 3)
    bid, claimed = await claim(store, MODELS[1], "live-replica", lease_s=30)
    theirs = await create(store, provider, MODELS[1], bid, claimed)  # created, about to be recorded
    await leases_run_out(store)
    batcher = Batcher(store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS)
    assert await batcher.run_once() == 0  # it fits, but it may be the live builder's: wait
    tag = queue_tag("anthropic", ENDPOINT, MODELS[1])
    assert await store.batches.mark_submitted(tag, bid, "live-replica", theirs, time.time())
    assert await settle(store, provider, crashed + live_ids) == 1
    stats = sim.stats()
    assert stats["message_batches_created"] == 2 and stats["max_submissions_per_custom_id"] == 1
    assert stats["batches_cancelled"] == 0


@pytest.mark.integration
async def test_recorded_and_other_sized_batches_are_not_taken(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0)
    ids = await crash(store, provider, [4], created=[False])
    other = await admit(store, MODELS[1], 4)  # a batch of the same size, submitted and recorded as usual
    assert (
        await Batcher(
            store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS
        ).run_once(force=True)
        == 1
    )
    with anthropic.Anthropic(base_url=sim.base, api_key="k", max_retries=0) as client:  # other software's batch
        request = {"custom_id": "theirs", "params": {"model": MODELS[0], "max_tokens": 10, "messages": []}}
        client.messages.batches.create(requests=[request] * 1)  # type: ignore[list-item]
    await leases_run_out(store)
    assert await settle(store, provider, ids + other) == 1
    stats = sim.stats()
    assert stats["message_batches_created"] == 3 and stats["max_submissions_per_custom_id"] == 1


@pytest.mark.integration
async def test_a_builder_whose_batch_was_adopted_records_it_without_cancelling(
    store: Store, provider: AnthropicProvider, sim: Sim
) -> None:
    sim.configure(batch_turnaround_s=3.0)
    await admit(store, MODELS[0], 3)
    bid, claimed = await claim(store, MODELS[0], "stalled-replica")
    created = await create(store, provider, MODELS[0], bid, claimed)
    await leases_run_out(store, "stalled-replica")
    assert (
        await Batcher(
            store.queues, store.batches, store.results, store.leases, {"anthropic": provider}, SETTINGS
        ).run_once()
        == 0
    )  # adopted
    tag = queue_tag("anthropic", ENDPOINT, MODELS[0])
    # The stalled builder wakes up and records the batch it created: already recorded, so it is not an orphan.
    assert await store.batches.mark_submitted(tag, bid, "stalled-replica", created, time.time())
    assert not await store.batches.mark_submitted(tag, bid, "stalled-replica", "msgbatch_other", time.time())
    assert await store.batches.recorded([created, "msgbatch_other"]) == {created}


# --- the listing, against the simulator -------------------------------------------------------------------------


def lines(n: int, *, refused: int = 0) -> list[BatchLine]:
    good = [BatchLine(custom_id=f"c{i}", body=body(MODELS[0], i)) for i in range(n)]
    bad = [BatchLine(custom_id=f"r{i}", body=msgspec.json.encode({"model": MODELS[0], "messages": [], "n": 2}))
           for i in range(refused)]  # fmt: skip
    return good + bad


def lapsed(claimed_at: float, sent: list[BatchLine], asked: list[list[str]]) -> Lapsed:
    async def ledger(provider_ids: Sequence[str]) -> Ledger:
        asked.append(list(provider_ids))
        return Ledger(recorded=frozenset(), rivals=())

    ids = frozenset(line.custom_id for line in sent)
    return Lapsed(batch_id="b", claimed_at=claimed_at, lapsed_at=time.time(), custom_ids=ids, lines=sent, ledger=ledger)


async def test_the_listing_walks_back_to_the_claim_page_by_page(
    provider: AnthropicProvider, sim: Sim, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.configure(batch_turnaround_s=30.0)
    monkeypatch.setattr(adapter, "LIST_LIMIT", 1)
    monkeypatch.setattr(adapter, "SKEW_S", 0.0)
    await provider.submit_batch("older", ENDPOINT, MODELS[0], lines(2))  # created before the claim: never a candidate
    claimed_at = time.time()
    ours = lines(2, refused=1)  # the refused line was never sent: the orphan holds two requests
    orphan = await provider.submit_batch("b", ENDPOINT, MODELS[0], ours)
    for _ in range(4):  # newer batches of other sizes: the orphan is on the fifth page
        await provider.submit_batch("other", ENDPOINT, MODELS[0], lines(3))
    asked: list[list[str]] = []
    assert await provider.find_batch(lapsed(claimed_at, ours, asked)) == Found(provider_id=orphan)
    assert asked == [[orphan]]
    monkeypatch.setattr(adapter, "MAX_LIST_PAGES", 5)  # the listing stops before the claim: size and time fall short
    assert await provider.find_batch(lapsed(claimed_at, ours, asked)) == Found(wait=True)
    assert sim.stats()["batches_cancelled"] == 0
