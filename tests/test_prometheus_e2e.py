"""The dashboard against a real Prometheus scraping a real router: every panel's PromQL returns data."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageParam

from router.ops.serving import free_port
from tests.helpers.metrics import series
from tests.helpers.promql import expressions, instantiate, load_dashboard
from tests.helpers.servers import FAST, ROOT, RouterFactory, Sim
from tests.helpers.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROUTER_BATCH = FAST | {"cancel_lead_s": 0.0}  # a late batch is cut as its calls escalate: see escalated_and_late
LATER = {"X-Deadline": "2h"}
WINDOW = "3m"  # longer than this test: every rate() and increase() sees all of its samples
SAVINGS_HEADER = "x-router-savings-usd"
HEADER_DECIMALS = 8  # the router formats money headers with 8 decimals
METRICS_TOKEN = "scrape-" + secrets.token_hex(8)
SCRAPE = {"authorization": f"Bearer {METRICS_TOKEN}"}  # the router runs with `metrics_token_env`, as config/ shows
Headers = Mapping[str, str]


def prometheus_tool(name: str) -> str:
    """A program of the prometheus package; missing, a failure in CI (REQUIRE_PROMETHEUS=1) and a skip elsewhere."""
    found = shutil.which(name) or next((p for p in (f"/usr/bin/{name}",) if Path(p).exists()), None)
    if found:
        return found
    if os.environ.get("REQUIRE_PROMETHEUS") == "1":
        pytest.fail(f"REQUIRE_PROMETHEUS=1 but there is no {name} binary (apt-get install prometheus)")
    pytest.skip(f"no {name} binary: apt-get install prometheus")


class Prometheus:
    """A running Prometheus server and its HTTP query API."""

    def __init__(self, base: str, log: Path) -> None:
        self.base = base
        self.log = log

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query at now: its result vector (or scalar, as a one-element list)."""
        response = httpx.get(self.base + "/api/v1/query", params={"query": expr}, timeout=5)
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        data = body["data"]
        result: list[dict[str, Any]] = data["result"] if data["resultType"] == "vector" else [{"value": data["result"]}]
        return result

    def scrapes(self) -> int:
        """How many successful scrapes of the router Prometheus holds."""
        result = self.query('sum_over_time(up{job="router"}[10m])')
        return int(float(result[0]["value"][1])) if result else 0

    def wait_for_scrapes(self, count: int, timeout: float = 10.0) -> None:
        """Wait until `count` more scrapes have landed."""
        target = self.scrapes() + count
        wait_until(lambda: self.scrapes() >= target, timeout, f"a scrape of the router (log: {self.log})", every=0.2)


PrometheusFactory = Callable[[str], Prometheus]


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """Start Prometheus on 127.0.0.1 scraping a router's /metrics every second, with its token; stopped afterwards."""
    binary = prometheus_tool("prometheus")
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:

        def start(router_base: str) -> Prometheus:
            config = {
                "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "router",
                        "metrics_path": "/metrics",
                        "authorization": {"type": "Bearer", "credentials": METRICS_TOKEN},
                        "static_configs": [{"targets": [urlsplit(router_base).netloc]}],
                    }
                ],
            }
            config_file = tmp_path / "prometheus.yml"
            config_file.write_text(yaml.safe_dump(config))
            port = free_port()
            log_path = tmp_path / "prometheus.log"
            log = stack.enter_context(log_path.open("wb"))
            args = [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ]
            processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
            server = Prometheus(f"http://127.0.0.1:{port}", log_path)

            def ready() -> bool:
                assert processes[-1].poll() is None, f"prometheus exited:\n{log_path.read_text()[-2000:]}"
                return _ready(server.base)

            wait_until(ready, 10, f"Prometheus to be ready (log: {log_path})", every=0.1)
            return server

        try:
            yield start
        finally:
            for process in processes:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _ready(base: str) -> bool:
    try:
        return httpx.get(base + "/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def prompt(i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Summarise report number {i} for the dashboard."}]


def realtime_calls(client: openai.OpenAI, i: int) -> list[Headers]:
    """A chat call, a stream, an embedding and an unpriced model, in real time; their response headers."""
    chat = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(i))
    stream = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=prompt(i),
        stream=True,
        stream_options={"include_usage": True},
    )
    assert [chunk for chunk in stream.parse() if chunk.usage]  # consumed to the end: the router books it then
    embedding = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input=f"report {i}")
    unpriced = client.chat.completions.with_raw_response.create(model="sim-unpriced", messages=prompt(i))
    for raw in (chat, stream, embedding, unpriced):
        assert raw.headers["x-router-lane"] == "realtime"
    return [chat.headers, stream.headers, embedding.headers, unpriced.headers]


def failed_line(base: str, key: str, sim: Sim, i: int) -> None:
    """A deferred call whose batch line fails at the provider after admission (the simulator fails every line)."""
    headers = {"Authorization": f"Bearer {key}", "X-Deadline": "2h", "Prefer": "respond-async"}
    sim.configure(batch_line_failure_rate=1.0)
    try:
        body = {"model": "gpt-4o-mini", "messages": prompt(200 + i)}
        accepted = httpx.post(base + "/v1/chat/completions", headers=headers, json=body, timeout=30)
        assert accepted.status_code == 202
        url = f"{base}/v1/deferred/{accepted.json()['id']}?wait=5"
        done = wait_until(lambda: (r := httpx.get(url, headers=headers, timeout=30)).status_code != 202 and r, 60)
        assert done.status_code >= 400  # the line's error, passed on
    finally:
        sim.configure(batch_line_failure_rate=0.0)


def answer_cache_calls(client: openai.OpenAI, i: int) -> None:
    """A deterministic call asked twice: a miss, then a hit of the answer cache, which this client's tenant has on."""
    answers = [
        client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(100 + i), temperature=0)
        for _ in range(2)
    ]
    assert [raw.headers["x-router-cache"] for raw in answers] == ["miss", "hit"]


# Model routes, one per mode, each on its own asked-for model: a forced predict call moves to the cheaper model (the
# route lever saves), the cascade's cheap answers never end in `#### <number>` (escalated: its cheap call is a loss),
# and every shadow call also asks the cheaper model (the price of learning, and evidence for the plans).
ROUTES = [
    {"from": "gpt-4o", "to": ["gpt-4o-mini"], "mode": "predict"},
    {"from": "gpt-4.1", "to": ["gpt-4.1-mini"], "mode": "cascade", "cascade": {"final_answer": r"####\s*(-?\d+)\s*$"}},
    {"from": "gpt-5", "to": ["gpt-5-mini"], "mode": "shadow", "shadow_rate": 1.0},
]


def routed_calls(client: openai.OpenAI, i: int) -> list[Headers]:
    """One call per model route: predict forced to the cheaper model, cascaded and escalated, shadowed."""
    forced = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=prompt(i), extra_headers={"X-Router-Route": "force"}
    )
    assert (forced.headers["x-router-model"], forced.headers["x-router-route"]) == ("gpt-4o-mini", "forced")
    escalated = client.chat.completions.with_raw_response.create(model="gpt-4.1", messages=prompt(i))
    assert escalated.headers["x-router-route"] == "cascade_escalated"
    shadowed = client.chat.completions.with_raw_response.create(model="gpt-5", messages=prompt(i))
    assert (shadowed.headers["x-router-model"], shadowed.headers["x-router-route"]) == ("gpt-5", "shadow")
    return [forced.headers, escalated.headers, shadowed.headers]


def deferred_calls(base: str, key: str, first: int, n: int) -> list[Headers]:
    """`n` chat calls and one embedding with a 2 h deadline, held until their batches answer; their headers."""

    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=key, timeout=30, max_retries=0) as c:
            chats = [
                c.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=prompt(i),
                    extra_headers=LATER,
                )
                for i in range(first, first + n)
            ]
            embedding = c.embeddings.with_raw_response.create(
                model="text-embedding-3-small", input=f"report {first}", extra_headers=LATER
            )
            return await asyncio.gather(*chats, embedding)

    raws = asyncio.run(run())
    for raw in raws:
        assert raw.headers["x-router-lane"] == "batch"
    return [raw.headers for raw in raws]


def escalated_and_late(base: str, key: str, sim: Sim) -> list[Headers]:
    """Calls the guard must escalate, answered after their deadline, whose batch lines are then billed late; and
    calls with time to spare in the same batch, harvested from it when it is cut. Every call's result headers."""
    before = {(name, label): _counter(base, name, label) for name, label in CHANGED_BY_ESCALATION}
    # The batch takes 8 s (its lines finish from 0.8 s to 6.4 s, earliest deadline first), longer than the 6 s
    # deadline allows. With no cancel lead (ROUTER_BATCH) the guard cuts the batch and answers the 6 s calls in
    # real time together, at deadline - 1 s, and a 2 s upstream makes those answers miss the deadline. Their lines
    # finished before the cancel are harvested after the calls were taken for escalation: billed twice, counted as
    # late results. The 20 s calls whose lines finished by then are harvested at the batch price; the rest go to
    # another batch, a quick one. The seconds leave room for a loaded host to be slow in submitting the batch: the
    # short calls' lines must finish before the cut, however late the batch started.
    # The cut batch stays `cancelling` for 3 s, so its lines are read only after the guard has taken the 6 s calls
    # for escalation, however slowly a loaded host runs the guard: their finished lines are then late, never theirs.
    sim.configure(batch_turnaround_s=8, latency_ms=2000, batch_cancel_delay_s=3)
    auth = {"authorization": f"Bearer {key}"}

    async def submit(i: int, deadline: str) -> str:
        async with httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as c:
            accepted = await c.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o-mini", "messages": prompt(99 + i)},
                headers={"prefer": "respond-async", "x-deadline": deadline},
            )
        assert accepted.status_code == 202, accepted.text
        return accepted.headers["location"]

    async def submit_all() -> list[str]:  # at once, so they share one batch
        return await asyncio.gather(*(submit(i, "6s" if i < SHORT else "20s") for i in range(SHORT + LONG)))

    locations = asyncio.run(submit_all())
    cut = ("hybrid_router_batches_cut_total", "")
    wait_until(lambda: _counter(base, *cut) > before[cut], 15, "the late batch to be cut", every=0.1)
    sim.configure(batch_turnaround_s=1)  # the next batch, holding the 10 s calls not harvested: back in a second
    answers = [httpx.get(base + location + "?wait=25", headers=auth, timeout=30) for location in locations]
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert all(a.headers["x-router-escalated"] == "true" for a in answers[:SHORT])
    assert any(a.headers["x-router-lane"] == "batch" for a in answers[SHORT:])

    def unchanged() -> list[str]:
        return [f"{n}{{{lb}}}" for n, lb in CHANGED_BY_ESCALATION if _counter(base, n, lb) <= before[n, lb]]

    try:
        wait_until(lambda: not unchanged(), 10, "the escalation, miss, cut, harvest and late result to be counted")
    except TimeoutError as exc:
        raise AssertionError(f"not counted: {unchanged()}") from exc
    return [a.headers for a in answers]


SHORT, LONG = 2, 10  # calls with a 6 s and a 20 s deadline in the batch escalated_and_late cuts
CHANGED_BY_ESCALATION = [
    ("hybrid_router_deadline_escalations_total", 'reason="submitted"'),
    ("hybrid_router_deadline_misses_total", ""),
    ("hybrid_router_late_batch_results_total", ""),
    ("hybrid_router_paid_twice_total", ""),
    ("hybrid_router_batches_cut_total", ""),
    ("hybrid_router_harvested_lines_total", ""),
]


def still_waiting(base: str, key: str, sim: Sim) -> None:
    """A deferred call left in a batch that outlasts the test, as calls usually are in flight: its queue keeps work,
    so the pruner (every few seconds) does not drop the queue and its depth series before the queries run."""
    sim.configure(batch_turnaround_s=3600)
    accepted = httpx.post(
        base + "/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": "a report for later"},
        headers={"authorization": f"Bearer {key}", "prefer": "respond-async"} | LATER,
    )
    assert accepted.status_code == 202, accepted.text


def over_its_limit(base: str, key: str) -> None:
    """A tenant with rpm 1 makes two real-time calls: the second is refused with 429."""
    auth = {"authorization": f"Bearer {key}"}
    body = {"model": "gpt-4o-mini", "messages": prompt(0)}
    statuses = [httpx.post(base + "/v1/chat/completions", json=body, headers=auth).status_code for _ in range(2)]
    assert statuses == [200, 429]


def _exported(base: str, name: str) -> bool:
    """Whether the router's own /metrics has a series of `name` yet."""
    return bool(series(httpx.get(base + "/metrics", headers=SCRAPE).text, name))


def _counter(base: str, name: str, label: str = "") -> float:
    """The sum of a metric's series on the router's own /metrics whose labels contain `label`."""
    return sum(series(httpx.get(base + "/metrics", headers=SCRAPE).text, name, label).values())


def test_every_dashboard_query_returns_data(
    start_router: RouterFactory, sim: Sim, prometheus: PrometheusFactory
) -> None:
    tenant = "prom-e2e-" + secrets.token_hex(3)  # this test's own series in the process-wide registry
    capped = "prom-e2e-capped-" + secrets.token_hex(3)  # with every kind of limit, for the tenant panels
    cached = "prom-e2e-cached-" + secrets.token_hex(3)  # with the answer cache on, for its panels
    key, capped_key, cached_key = ("sk-" + secrets.token_hex(8) for _ in range(3))
    keys = [
        {"sha256": hashlib.sha256(k.encode()).hexdigest(), "tenant": t}
        for k, t in ((key, tenant), (capped_key, capped), (cached_key, cached))
    ]
    tenants = {capped: {"rpm": 1, "max_deferred": 5, "daily_budget_usd": 50.0}, cached: {"answer_cache": True}}
    protected = {"metrics_token_env": "METRICS_TOKEN", "environ": {"METRICS_TOKEN": METRICS_TOKEN}}
    with start_router(batch=ROUTER_BATCH, auth="keys", keys=keys, tenants=tenants, routes=ROUTES, **protected) as base:
        assert httpx.get(base + "/metrics").status_code == 401  # Prometheus gets in with the token only
        server = prometheus(base)
        server.wait_for_scrapes(1)
        over_its_limit(base, capped_key)
        realtime: list[Headers] = []
        deferred: list[Headers] = []
        with (
            openai.OpenAI(base_url=base + "/v1", api_key=key, timeout=30, max_retries=0) as client,
            openai.OpenAI(base_url=base + "/v1", api_key=cached_key, timeout=30, max_retries=0) as caching,
        ):
            # Two rounds with a scrape between: a series born at its first increment shows a rate from its second.
            for round_ in range(2):
                realtime += realtime_calls(client, round_)
                realtime += routed_calls(client, round_)
                answer_cache_calls(caching, round_)
                failed_line(base, key, sim, round_)
                deferred += deferred_calls(base, key, first=10 * round_, n=3)
                server.wait_for_scrapes(1)
        deferred += escalated_and_late(base, key, sim)
        still_waiting(base, key, sim)
        # The shadow pairs are evidence: the plans, remade every few seconds, export it per route and task.
        wait_until(lambda: _exported(base, "hybrid_router_route_quality_lower_bound"), 15, "the route evidence")
        server.wait_for_scrapes(2)  # the last counter changes are in Prometheus

        empty = []
        for expr in expressions(load_dashboard()):
            result = server.query(instantiate(expr, WINDOW))
            if not result:
                empty.append(expr)
            elif not any(math.isfinite(float(sample["value"][1])) for sample in result):
                empty.append(f"{expr} (only NaN/Inf)")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

        def total(name: str) -> float:
            found = server.query(f'sum({name}{{tenant="{tenant}"}})')
            return float(found[0]["value"][1]) if found else 0.0

        saved, lost = total("hybrid_router_savings_usd_total"), total("hybrid_router_losses_usd_total")
        by_lever = total("hybrid_router_lever_savings_usd_total") - total("hybrid_router_lever_losses_usd_total")
        route_lever = server.query(
            f'sum by (lever) (hybrid_router_lever_savings_usd_total{{tenant="{tenant}",lever="route"}})'
        )
        scraped = httpx.get(base + "/metrics", headers=SCRAPE).text
        on_router = sum(series(scraped, "hybrid_router_savings_usd_total", tenant).values())
    assert saved > 0 and lost > 0  # the escalated cascades' cheap calls were lost
    assert float(route_lever[0]["value"][1]) > 0  # the forced calls saved on the route lever
    assert saved == pytest.approx(on_router, rel=1e-9)
    assert by_lever == pytest.approx(saved - lost, rel=1e-9)  # the levers add up to the net savings
    assert all(SAVINGS_HEADER in h for h in deferred)
    stated = [float(h[SAVINGS_HEADER]) for h in realtime + deferred if SAVINGS_HEADER in h]  # real time: 0 or absent
    # Each header is rounded to 8 decimals; the counters add the unrounded values. A header states a call's net
    # savings (an escalated cascade's is negative: it paid for two calls).
    assert saved - lost == pytest.approx(sum(stated), rel=1e-9, abs=len(stated) * 0.5 * 10**-HEADER_DECIMALS)


def test_committed_prometheus_config_is_valid() -> None:
    promtool = prometheus_tool("promtool")
    checked = subprocess.run(
        [promtool, "check", "config", str(ROOT / "config" / "prometheus.yml")], capture_output=True, timeout=10
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
