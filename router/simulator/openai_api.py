"""OpenAI real-time routes: chat completions, legacy completions, embeddings, responses and models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler
from litestar.params import FromPath
from litestar.response import Stream

from router.simulator import azure, catalog, streams
from router.simulator import openai_bodies as bodies
from router.simulator import openai_types as wire
from router.simulator import responses as responses_api
from router.simulator.errors import OpenAIError
from router.simulator.state import SimState
from router.simulator.web import SSE, admit, json_response, openai_injected, request_id


class ModelList(msgspec.Struct):
    """`ListModelsResponse`."""

    object: str
    data: list[catalog.Model]


_MODEL_LIST = ModelList("list", list(catalog.MODELS))


def model_routes() -> list[HTTPRouteHandler]:
    """`GET /v1/models` and `GET /v1/models/{id}` (stateless; fresh handler objects for each app)."""

    @get(azure.api_paths("/models"))
    async def list_models() -> Response[bytes]:
        return json_response(_MODEL_LIST)

    @get(azure.api_paths("/models/{model_id:str}"))
    async def retrieve_model(request: Request[Any, Any, Any]) -> Response[bytes]:
        model_id: str = request.path_params["model_id"]
        model = catalog.find_model(model_id)
        if model is None:
            raise OpenAIError(
                404,
                f"The model `{model_id}` does not exist or you do not have access to it.",
                param="model",
                code="model_not_found",
            )
        return json_response(model)

    return [list_models, retrieve_model]


def _include_usage(options: wire.StreamOptions | None) -> bool:
    return options is not None and options.include_usage


def routes(state: SimState) -> list[HTTPRouteHandler]:
    """The real-time OpenAI handlers of one simulator instance."""

    async def body_of(request: Request[Any, Any, Any], path: str) -> bytes:
        body = await admit(state, request, path, openai_injected)
        return azure.deployment_body(request.path_params.get("deployment"), body)

    def check_flex(tier: str | None) -> None:
        if tier == "flex" and state.config.flex_unavailable:
            # The documented flex shortage: a 429 the caller is not charged for.
            raise OpenAIError(
                429, "Resource Unavailable: flex processing is out of capacity; retry later or use the default tier.",
                type="rate_limit_error", code="resource_unavailable",
            )  # fmt: skip

    def stream(events: Iterator[bytes]) -> Stream:
        headers = {"cache-control": "no-cache", "x-request-id": request_id()}
        return Stream(
            streams.paced(events, state.config.stream_chunk_delay_ms, state.stats), media_type=SSE, headers=headers
        )

    @post(azure.realtime_paths("/chat/completions"), status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        req = bodies.decode_chat(await body_of(request, "/v1/chat/completions"))
        check_flex(req.service_tier)
        answer = bodies.chat_completion(req, state.cache, state.outcomes)
        if req.prompt_cache_key is not None:
            state.stats.prompt_cache_keys[req.prompt_cache_key] += 1
        if req.stream:
            return stream(streams.chat_events(answer, _include_usage(req.stream_options)))
        return json_response(answer, headers={"x-request-id": request_id()})

    @post(azure.realtime_paths("/completions"), status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        req = bodies.decode_completion(await body_of(request, "/v1/completions"))
        answer = bodies.completion(req, state.cache)
        if req.stream:
            return stream(streams.completion_events(answer, _include_usage(req.stream_options)))
        return json_response(answer, headers={"x-request-id": request_id()})

    @post(azure.realtime_paths("/embeddings"), status_code=200)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[bytes]:
        req = bodies.decode_embedding(await body_of(request, "/v1/embeddings"))
        return json_response(bodies.embeddings(req, state.cache), headers={"x-request-id": request_id()})

    @post(azure.realtime_paths("/responses"), status_code=200)
    async def responses(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
        req = responses_api.decode(await body_of(request, "/v1/responses"))
        check_flex(req.service_tier)
        answer = responses_api.response(req, state.cache, state.outcomes)
        if req.stream and not req.background:
            return stream(streams.response_events(answer))
        shown = state.background.create(answer, stream=bool(req.stream)) if req.background else answer
        return json_response(shown, headers={"x-request-id": request_id()})

    return [chat_completions, completions, embeddings, responses]


def background_routes(state: SimState) -> list[HTTPRouteHandler]:
    """`GET /v1/responses/{id}` and `POST /v1/responses/{id}/cancel`: the responses created with `background`."""

    @get(azure.api_paths("/responses/{response_id:str}"))
    async def retrieve_response(response_id: FromPath[str]) -> Response[bytes]:
        return json_response(state.background.retrieve(response_id), headers={"x-request-id": request_id()})

    @post(azure.api_paths("/responses/{response_id:str}/cancel"), status_code=200)
    async def cancel_response(response_id: FromPath[str]) -> Response[bytes]:
        return json_response(state.background.cancel(response_id), headers={"x-request-id": request_id()})

    return [retrieve_response, cancel_response]
