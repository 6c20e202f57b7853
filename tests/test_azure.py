"""`openai.AzureOpenAI` against the router, in both lanes, in front of an OpenAI upstream and of an Azure one (the
simulator's Azure surface), over real sockets."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.helpers.servers import FAST, RouterFactory, Sim
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.integration

VERSION = "2024-10-21"
DATED = "gpt-4o-mini-2024-07-18"
LATER = {"X-Deadline": "2h"}


def prompt(i: int) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": f"Summarise contract number {i}."}]


def direct_answer(sim: Sim, messages: list[ChatCompletionMessageParam], model: str) -> str:
    """The simulator's answer asked directly (it depends on the prompt and the model)."""
    with openai.OpenAI(base_url=sim.v1, api_key="x", max_retries=0) as c:
        return c.chat.completions.create(model=model, messages=messages).choices[0].message.content or ""


def azure_upstream(sim: Sim, **fields: Any) -> dict[str, Any]:
    """The simulator's Azure surface as an upstream of kind `azure`."""
    entry = {"name": "azure", "kind": "azure", "base_url": sim.base, "api_key_env": "SIM_KEY"}
    return entry | {"deployments": {"gpt-4o-mini": DATED}} | fields


@pytest.fixture
def clients() -> Iterator[list[openai.AzureOpenAI]]:
    made: list[openai.AzureOpenAI] = []
    yield made
    for client in made:
        client.close()


def azure_client(made: list[openai.AzureOpenAI], base: str, **kw: Any) -> openai.AzureOpenAI:
    kw.setdefault("api_key", "dev")
    client = openai.AzureOpenAI(azure_endpoint=base, api_version=VERSION, max_retries=0, timeout=60, **kw)
    made.append(client)
    return client


def both_lanes(made: list[openai.AzureOpenAI], base: str) -> dict[str, Any]:
    """A real-time call, a streamed one and a deferred one through `AzureOpenAI`, unchanged."""
    now = azure_client(made, base)
    later = azure_client(made, base, default_headers=LATER)
    realtime = now.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(1))
    chunks = now.chat.completions.create(model="gpt-4o-mini", messages=prompt(2), stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    deferred = later.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(3))
    assert realtime.http_request.url.path == "/openai/deployments/gpt-4o-mini/chat/completions"
    return {"realtime": realtime, "streamed": streamed, "deferred": deferred}


def test_azure_client_in_front_of_an_openai_upstream(
    clients: list[openai.AzureOpenAI], start_router: RouterFactory, sim: Sim
) -> None:
    with start_router(batch=FAST) as base:
        got = both_lanes(clients, base)
    assert got["realtime"].headers["x-router-lane"] == "realtime"
    assert got["realtime"].parse().choices[0].message.content == direct_answer(sim, prompt(1), "gpt-4o-mini")
    assert got["streamed"] == direct_answer(sim, prompt(2), "gpt-4o-mini")
    assert got["deferred"].headers["x-router-lane"] == "batch"
    assert got["deferred"].parse().choices[0].message.content == direct_answer(sim, prompt(3), "gpt-4o-mini")
    stats = sim.stats()
    assert stats["batches_created"] == 1
    assert stats["azure_batches_created"] == 0
    assert stats["batch_lines_billed"] == 1


def test_azure_client_in_front_of_an_azure_upstream_runs_the_global_batch_api(
    clients: list[openai.AzureOpenAI], start_router: RouterFactory, sim: Sim
) -> None:
    with start_router(batch=FAST, upstreams=[azure_upstream(sim)]) as base:
        got = both_lanes(clients, base)
        usage = httpx.get(base + "/v1/usage").json()
    realtime, deferred = got["realtime"], got["deferred"]
    assert realtime.headers["x-router-lane"] == "realtime"
    assert realtime.parse().model == DATED  # the upstream's deployment answered
    assert realtime.parse().choices[0].message.content == direct_answer(sim, prompt(1), DATED)
    assert got["streamed"] == direct_answer(sim, prompt(2), DATED)
    assert deferred.headers["x-router-lane"] == "batch"
    assert deferred.parse().choices[0].message.content == direct_answer(sim, prompt(3), DATED)
    assert float(deferred.headers["x-router-savings-usd"]) > 0
    stats = sim.stats()
    assert stats["azure_batches_created"] == 1  # through /openai/files and /openai/batches
    assert stats["batches_created"] == 1
    assert stats["batch_lines_billed"] == 1  # billed once
    assert stats["max_submissions_per_custom_id"] == 1
    assert stats["azure_requests"]["/v1/batches"] == 1
    assert stats["realtime_calls_billed"] == 2 + 3  # the two real-time calls, and this test's direct answers
    assert usage["lanes"]["realtime"]["requests"] == 2
    assert usage["lanes"]["batch"]["requests"] == 1


def test_the_v1_surface_both_ways(start_router: RouterFactory, sim: Sim) -> None:
    upstreams = [azure_upstream(sim, api_version="v1")]
    # Azure's v1 surface is the plain OpenAI client on `{endpoint}/openai/v1`.
    with (
        start_router(batch=FAST, upstreams=upstreams) as base,
        openai.OpenAI(base_url=base + "/openai/v1", api_key="dev", max_retries=0, timeout=60) as client,
    ):
        now = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=prompt(4))
        later = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=prompt(5), extra_headers=LATER
        )
        embedded = client.embeddings.create(model="text-embedding-3-small", input="x")
    assert now.headers["x-router-lane"] == "realtime"
    assert now.parse().model == DATED
    assert later.headers["x-router-lane"] == "batch"
    assert later.parse().choices[0].message.content == direct_answer(sim, prompt(5), DATED)
    assert len(embedded.data[0].embedding) == 1536
    stats = sim.stats()
    assert stats["azure_batches_created"] == 1
    assert stats["batch_lines_billed"] == 1


async def test_async_client_with_deployments_and_keys(start_router: RouterFactory, sim: Sim) -> None:
    keys = [{"sha256": hashlib.sha256(b"sk-team").hexdigest(), "tenant": "team"}]
    tree = {"auth": "keys", "keys": keys, "azure_deployments": {"chat": "gpt-4o-mini"}, "batch": FAST}
    with start_router(**tree) as base:
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=base, api_version=VERSION, api_key="sk-team", max_retries=0, timeout=60
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(model="chat", messages=prompt(6))
            stream = await client.chat.completions.create(
                model="chat", messages=prompt(7), stream=True, extra_headers=LATER
            )
            streamed = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        async with openai.AsyncAzureOpenAI(
            azure_endpoint=base, api_version=VERSION, api_key="sk-wrong", max_retries=0
        ) as stranger:
            with pytest.raises(openai.AuthenticationError):
                await stranger.chat.completions.create(model="chat", messages=prompt(6))
        async with httpx.AsyncClient() as http:
            missing = await http.post(
                base + "/openai/deployments/chat/chat/completions", json={"messages": prompt(6)},
                headers={"api-key": "sk-team"},
            )  # fmt: skip
            usage = (await http.get(base + "/v1/usage", headers={"authorization": "Bearer sk-team"})).json()
    assert raw.headers["x-router-lane"] == "realtime"
    assert raw.parse().model == "gpt-4o-mini"  # the deployment `chat` asked for gpt-4o-mini
    assert streamed == direct_answer(sim, prompt(7), "gpt-4o-mini")
    assert missing.status_code == 400
    error = missing.json()["error"]
    assert error["code"] == "MissingApiVersionParameter"
    assert error["type"] == "invalid_request_error"
    assert usage["tenant"] == "team"
    assert sum(lane["requests"] for lane in usage["lanes"].values()) == 2


def test_native_batches_on_the_azure_paths(
    clients: list[openai.AzureOpenAI], start_router: RouterFactory, sim: Sim
) -> None:
    """`/openai/files` and `/openai/batches` through the router to an Azure upstream, as Azure documents them."""
    lines = [
        {"custom_id": f"task-{i}", "method": "POST", "url": "/chat/completions",
         "body": {"model": DATED, "messages": prompt(i)}}
        for i in range(2)
    ]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines).encode()
    with start_router(batch=FAST, upstreams=[azure_upstream(sim)]) as base:
        client = azure_client(clients, base)
        uploaded = client.files.create(file=("input.jsonl", content), purpose="batch")
        wait_until(lambda: client.files.retrieve(uploaded.id).status == "processed", what="the file to be processed")
        batch = client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/chat/completions",  # type: ignore[arg-type]  # Azure's documented form
            completion_window="24h",
        )
        done = wait_until(
            lambda: (b := client.batches.retrieve(batch.id)).status == "completed" and b, what="the batch to complete"
        )
        assert done.output_file_id is not None
        output = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    assert sorted(line["custom_id"] for line in output) == ["task-0", "task-1"]
    assert {line["response"]["status_code"] for line in output} == {200}
    stats = sim.stats()
    assert stats["azure_batches_created"] == 1
    assert stats["batch_lines_billed"] == 2


def test_bad_input_on_the_azure_paths_gets_openai_shaped_errors(start_router: RouterFactory) -> None:
    q = {"api-version": VERSION}
    with start_router() as base, httpx.Client(base_url=base, headers={"api-key": "dev"}) as http:
        answers = {
            "not json": http.post("/openai/deployments/gpt-4o-mini/chat/completions", params=q, content=b"{nope"),
            "empty": http.post("/openai/deployments/gpt-4o-mini/embeddings", params=q, content=b""),
            "array": http.post("/openai/v1/chat/completions", json=[1, 2]),
            "no model": http.post("/openai/responses", params=q, json={"input": "x"}),
            "unknown model": http.post(
                "/openai/deployments/no-such/chat/completions", params=q, json={"messages": prompt(1)}
            ),
            "no version": http.get("/openai/models"),
            "unknown path": http.post("/openai/deployments/gpt-4o-mini/images/generations", params=q, json={}),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "not json": 400, "empty": 400, "array": 400, "no model": 400, "unknown model": 404, "no version": 400,
        "unknown path": 404,
    }  # fmt: skip
    for answer in answers.values():
        error = answer.json()["error"]
        assert isinstance(error["message"], str)
        assert error["type"] == "invalid_request_error"
