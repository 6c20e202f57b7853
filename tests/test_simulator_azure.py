"""The simulator's Azure OpenAI surface through the official `AzureOpenAI` client, and the `azure` adapter's paths."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from router.core.settings import Upstream
from router.providers.azure import AzureProvider
from tests.helpers.servers import Sim
from tests.helpers.waiting import wait_until

VERSION = "2024-10-21"
DATED = "gpt-4o-mini-2024-07-18"
MESSAGES: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "Name three rivers."}]


def azure(sim: Sim) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=sim.base, api_version=VERSION, api_key="sk-sim", max_retries=0)


def test_a_deployment_answers_as_its_model_whatever_the_body_names(sim: Sim) -> None:
    with azure(sim) as client:
        raw = client.chat.completions.with_raw_response.create(model=DATED, messages=MESSAGES)
        streamed = client.chat.completions.create(model=DATED, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    assert raw.http_request.url.path == f"/openai/deployments/{DATED}/chat/completions"
    assert raw.http_request.url.params["api-version"] == VERSION
    assert raw.http_request.headers["api-key"] == "sk-sim"
    answer = raw.parse()
    assert answer.model == DATED
    assert text == answer.choices[0].message.content
    # The deployment in the path wins over the body's model, as on Azure.
    body = {"model": "gpt-4o", "messages": MESSAGES}
    moved = httpx.post(
        f"{sim.base}/openai/deployments/{DATED}/chat/completions?api-version={VERSION}", json=body,
        headers={"api-key": "k"},
    )  # fmt: skip
    assert moved.json()["model"] == DATED
    stats = sim.stats()
    assert stats["azure_requests"]["/v1/chat/completions"] == 3
    assert stats["realtime_calls_billed"] == 3


def test_azure_answers_its_own_errors(sim: Sim) -> None:
    url = f"{sim.base}/openai/deployments/gpt-4o-mini/chat/completions"
    body = {"messages": MESSAGES}
    missing = httpx.post(url, json=body, headers={"api-key": "k"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "MissingApiVersionParameter"
    keyless = httpx.post(url, params={"api-version": VERSION}, json=body)
    assert keyless.status_code == 401
    assert keyless.json()["error"]["code"] == "401"
    with azure(sim) as client, pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    assert caught.value.code == "DeploymentNotFound"
    # The v1 surface needs no api-version, and takes the key as a Bearer too.
    v1 = httpx.post(
        f"{sim.base}/openai/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={"authorization": "Bearer k"},
    )  # fmt: skip
    assert v1.status_code == 200
    assert v1.json()["object"] == "chat.completion"


def test_a_global_batch_runs_on_the_azure_paths_as_documented(sim: Sim) -> None:
    lines = [
        {"custom_id": f"task-{i}", "method": "POST", "url": "/chat/completions",
         "body": {"model": DATED, "messages": [{"role": "user", "content": f"Question {i}"}]}}
        for i in range(3)
    ]  # fmt: skip
    content = "\n".join(json.dumps(line) for line in lines).encode()
    with azure(sim) as client:
        uploaded = client.files.create(file=("test.jsonl", content), purpose="batch")
        assert str(uploaded.status) == "pending"  # Azure processes an upload before a batch may use it
        assert client.files.retrieve(uploaded.id).status == "processed"
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
    assert sorted(line["custom_id"] for line in output) == ["task-0", "task-1", "task-2"]
    assert {line["response"]["status_code"] for line in output} == {200}
    assert {line["response"]["body"]["model"] for line in output} == {DATED}
    stats = sim.stats()
    assert stats["azure_batches_created"] == 1
    assert stats["batch_lines_billed"] == 3


@pytest.mark.parametrize(
    ("api_version", "endpoint", "path", "batch_url"),
    [
        ("2024-10-21", "/chat/completions", "/deployments/mini-batch/chat/completions", "/chat/completions"),
        ("2024-10-21", "/embeddings", "/deployments/mini-batch/embeddings", "/embeddings"),
        ("2024-10-21", "/responses", "/responses", "/responses"),
        ("v1", "/chat/completions", "/chat/completions", "/v1/chat/completions"),
    ],
)
async def test_the_adapter_sends_a_model_to_its_deployment(
    api_version: str, endpoint: str, path: str, batch_url: str
) -> None:
    upstream = Upstream(
        name="az", kind="azure", base_url="https://example.openai.azure.com/", api_version=api_version,
        deployments={"gpt-4o-mini": "mini-batch"},
    )  # fmt: skip
    provider = AzureProvider(upstream, "sk-azure")
    try:
        sent_path, sent = provider.route(endpoint, b'{"model":"gpt-4o-mini","input":"x"}')
        assert sent_path == path
        # The deployments surface names the deployment in the path; elsewhere the body names it.
        expected_model = "gpt-4o-mini" if path.startswith("/deployments/") else "mini-batch"
        assert json.loads(sent)["model"] == expected_model
        assert provider.batch_url(endpoint) == batch_url
        assert json.loads(provider.line_body(b'{"model":"gpt-4o-mini"}'))["model"] == "mini-batch"
        assert json.loads(provider.line_body(b'{"model":"gpt-4o"}'))["model"] == "gpt-4o"
        request = provider.client.build_request("GET", "/models")
        base = "/openai/v1" if api_version == "v1" else "/openai"
        assert request.url.path == base + "/models"
        assert request.url.params.get("api-version") == (None if api_version == "v1" else api_version)
        assert request.headers["api-key"] == "sk-azure"
        assert "authorization" not in request.headers
    finally:
        await provider.aclose()
