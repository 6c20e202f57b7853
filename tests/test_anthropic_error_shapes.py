"""Every path under Anthropic's surface (`/v1/messages...`) answers errors in Anthropic's shape, known routes or
not (an unknown route or method never reaches the routes' own handlers); OpenAI's paths keep OpenAI's shape."""

from __future__ import annotations

import anthropic
import httpx
import pytest

from tests.helpers.servers import RouterFactory


def anthropic_shaped(response: httpx.Response, kind: str) -> None:
    body = response.json()
    assert body["type"] == "error", body
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status", "kind"),
    [
        ("GET", "/v1/messages/batches/..%2F..%2F_sim%2Fstats", 404, "not_found_error"),
        ("GET", "/v1/messages/nothing/here", 404, "not_found_error"),
        ("GET", "/v1/messages", 405, "invalid_request_error"),
        ("PUT", "/v1/messages/batches", 405, "invalid_request_error"),
    ],
)
def test_unknown_paths_and_methods_under_messages_answer_in_anthropics_shape(
    start_router: RouterFactory, method: str, path: str, status: int, kind: str
) -> None:
    with start_router() as base:
        response = httpx.request(method, base + path, headers={"x-api-key": "dev"})
    assert response.status_code == status, response.text
    anthropic_shaped(response, kind)


def test_the_anthropic_sdk_reads_a_404_under_messages(start_router: RouterFactory) -> None:
    with (
        start_router() as base,
        anthropic.Anthropic(base_url=base, api_key="dev", max_retries=0) as client,
        pytest.raises(anthropic.NotFoundError) as missing,
    ):
        client.get("/v1/messages/unknown", cast_to=httpx.Response)
    assert isinstance(missing.value.body, dict)
    assert missing.value.body["type"] == "error"


def test_openai_paths_keep_openais_shape(start_router: RouterFactory) -> None:
    with start_router() as base:
        response = httpx.get(base + "/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
