"""The edge over real sockets: header limits (the server's bound and the app's guard) answered before
authentication, and the JSON depth limit."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from router.core.errors import HeadersTooLarge
from router.core.settings import Limits
from router.http.edge import check_headers, head_bound
from tests.helpers.servers import RouterFactory

KEY = "sk-team-a"
KEYS = [{"sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "team-a"}]
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT = {"model": "gpt-4o-mini", "messages": MESSAGES}


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


# --- header limits -------------------------------------------------------------------------------------------


def test_a_header_block_over_the_limit_is_431_before_auth(start_router: RouterFactory) -> None:
    # Over 32 KiB but under the server's coarse bound: the app's guard answers, before it looks for a key.
    value = "x" * (Limits().max_header_bytes + 1024)
    assert len(value) < head_bound(Limits())
    with start_router(auth="keys", keys=KEYS) as base:
        error = _error(httpx.post(base + "/v1/chat/completions", json=CHAT, headers={"x-big": value}), 431)
        assert httpx.post(base + "/v1/chat/completions", json=CHAT).status_code == 401  # the same call, no big header
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "request_header_fields_too_large"
    assert error["param"] is None
    assert "header fields total" in error["message"]  # the app's exact limit, not the server's bound


def test_an_8_mib_header_is_refused_by_the_server_before_it_is_read(start_router: RouterFactory) -> None:
    with start_router(auth="keys", keys=KEYS) as base, httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/healthz").status_code == 200  # the next request comes on a kept-alive connection
        big = {"x-big": "x" * (8 * 1024 * 1024)}
        response = client.post("/v1/chat/completions", json=CHAT, headers=big)
        error = _error(response, 431)
        assert response.headers["connection"] == "close"
        with openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0) as sdk:
            assert sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices  # still serving
    assert error["code"] == "request_header_fields_too_large"
    assert str(head_bound(Limits())) in error["message"]


def test_too_many_headers_is_431_before_auth(start_router: RouterFactory) -> None:
    many = {f"x-extra-{i}": "1" for i in range(Limits().max_headers)}  # plus the ones httpx sends itself
    few = {f"x-extra-{i}": "1" for i in range(Limits().max_headers // 2)}
    with start_router(auth="keys", keys=KEYS) as base:
        error = _error(httpx.post(base + "/v1/chat/completions", json=CHAT, headers=many), 431)
        assert (
            _error(httpx.post(base + "/v1/chat/completions", json=CHAT, headers=few), 401)["code"] == "invalid_api_key"
        )
        with pytest.raises(openai.APIStatusError) as info:  # the official SDK, with a key that would be refused
            oai = openai.OpenAI(base_url=base + "/v1", api_key="sk-wrong", max_retries=0, default_headers=many)
            with oai:
                oai.models.list()
    assert error["code"] == "request_header_fields_too_large"
    assert str(Limits().max_headers) in error["message"]
    assert info.value.status_code == 431
    assert info.value.code == "request_header_fields_too_large"


def test_configured_header_limits(start_router: RouterFactory) -> None:
    with start_router(limits={"max_header_bytes": 2048, "max_headers": 12}) as base:
        assert _error(httpx.get(base + "/v1/models", headers={"x-big": "x" * 2048}), 431)["code"]
        assert _error(httpx.get(base + "/v1/models", headers={f"x-{i}": "1" for i in range(12)}), 431)["code"]
        assert httpx.get(base + "/v1/models", headers={"x-big": "x" * 1024}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "refused"),
    [
        ([(b"a", b"b")] * 3, False),
        ([(b"a", b"b")] * 4, True),  # max_headers=3
        ([(b"name", b"x" * 96)], False),  # 100 bytes: names and values count
        ([(b"name", b"x" * 97)], True),
        ([(b"n" * 101, b"")], True),
    ],
)
def test_check_headers_limits(headers: list[tuple[bytes, bytes]], refused: bool) -> None:
    limits = Limits(max_headers=3, max_header_bytes=100)
    if not refused:
        check_headers(headers, limits)
        return
    with pytest.raises(HeadersTooLarge) as info:
        check_headers(headers, limits)
    assert info.value.status == 431
    assert info.value.code == "request_header_fields_too_large"


# --- JSON depth -----------------------------------------------------------------------------------------------


def depth(value: Any) -> int:
    """How deep arrays and objects nest in `value` (a scalar: 0)."""
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def tools_nested(total: int) -> list[dict[str, Any]]:
    """A `tools` list whose function parameters (a valid JSON Schema) make a chat body `total` levels deep."""
    inner: dict[str, Any] = {"type": "object"}
    tools = [{"type": "function", "function": {"name": "f", "parameters": inner}}]
    while depth({"tools": tools}) + 2 <= total:
        child: dict[str, Any] = {"type": "object"}
        inner["properties"] = {"a": child}
        inner = child
    if depth({"tools": tools}) < total:
        inner["properties"] = {}
    return tools


def test_a_body_at_the_depth_limit_is_served_and_one_deeper_is_400(oai: Any, router_url: str) -> None:
    client = oai(router_url)
    at_limit, over = tools_nested(Limits().max_json_depth), tools_nested(Limits().max_json_depth + 1)
    assert depth({"tools": at_limit}) == 64 and depth({"tools": over}) == 65
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=at_limit).choices
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=over)
    assert info.value.code == "json_too_deep"
    assert "64 levels" in info.value.message


@pytest.mark.parametrize("levels", [1_000, 100_000])
def test_messages_nested_far_past_the_limit_are_400_not_500(router_url: str, levels: int) -> None:
    # Today's failure: msgspec's RecursionError surfaced as a 500 with a traceback.
    body = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * levels + b"]" * levels + b"}"
    error = _error(httpx.post(router_url + "/v1/chat/completions", content=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "json_too_deep"


def test_brackets_inside_strings_do_not_count(oai: Any, router_url: str) -> None:
    text = '[{"a": ' * 500 + '\\"]' + "}]" * 500
    answer = oai(router_url).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": text}])
    assert answer.choices


def test_the_depth_limit_is_a_setting(start_router: RouterFactory) -> None:
    with start_router(limits={"max_json_depth": 4}) as base:
        shallow = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}  # 3 levels
        assert httpx.post(base + "/v1/chat/completions", json=shallow).status_code == 200
        deeper = shallow | {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}  # 5
        assert _error(httpx.post(base + "/v1/chat/completions", json=deeper), 400)["code"] == "json_too_deep"
