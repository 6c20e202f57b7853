"""Azure OpenAI upstreams (`kind: azure`): the OpenAI adapter over Azure's paths, key header and deployments.

- Real time: `{base_url}/openai/deployments/{deployment}/chat/completions?api-version=...` (and `completions`,
  `embeddings`); the Responses API at `/openai/responses` with the deployment as `model`. With `api_version: v1`,
  the v1 surface: the OpenAI paths under `{base_url}/openai/v1`, the deployment as `model`.
- The key goes in `api-key`. A model goes to the deployment `deployments` names for it, else to one of its name.
- The Batch API (Global Batch deployments): the input file uploaded to `/openai/files` with purpose `batch`,
  waited for until `processed` (Azure answers `pending` first), lines whose `url` is `/chat/completions` and whose
  `model` is the deployment, the batch created at `/openai/batches` with `completion_window: 24h`; polling, the
  output and error files and cancelling are OpenAI's.
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import httpx
import msgspec

from router.core.errors import UpstreamUnavailable
from router.core.settings import Upstream
from router.providers.base import backoff
from router.providers.openai import OpenAIProvider
from router.providers.transport import make_client

DEPLOYMENT_ENDPOINTS = frozenset({"/chat/completions", "/completions", "/embeddings"})
"""What Azure serves under `/openai/deployments/{deployment}` (the Responses API is not among them)."""
FILE_WAITING = frozenset({"pending", "running", "uploaded"})
"""An uploaded file's statuses before Azure can run a batch on it."""
FILE_WAIT_ROUNDS = 12
"""Looks at a pending input file before the batch is left to the batcher's next attempt (about a minute)."""


class _ModelView(msgspec.Struct):
    model: str | None = None


class _FileStatus(msgspec.Struct):
    status: str | None = None
    status_details: str | None = None


_model_decoder = msgspec.json.Decoder(_ModelView)
_file_status_decoder = msgspec.json.Decoder(_FileStatus)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


def azure_base_url(upstream: Upstream) -> str:
    """Where the adapter's paths start: `{base_url}/openai`, or `{base_url}/openai/v1` for the v1 surface."""
    base = upstream.base_url.rstrip("/").removesuffix("/openai")
    return base + ("/openai/v1" if upstream.api_version == "v1" else "/openai")


class AzureProvider(OpenAIProvider):
    """An Azure OpenAI resource."""

    kind = "azure"

    def __init__(self, upstream: Upstream, api_key: str | None, client: httpx.AsyncClient | None = None) -> None:
        self.v1 = upstream.api_version == "v1"
        if client is None:
            located = msgspec.structs.replace(upstream, base_url=azure_base_url(upstream))
            client = make_client(located, {"api-key": api_key} if api_key else {})
            if not self.v1:
                client.params = client.params.set("api-version", upstream.api_version)
        super().__init__(upstream, None, client)

    def deployment(self, model: str) -> str:
        """The deployment serving `model`."""
        return self.upstream.deployments.get(model, model)

    def _model(self, body: bytes) -> str | None:
        try:
            return _model_decoder.decode(body).model
        except (msgspec.DecodeError, RecursionError):
            return None

    def _named(self, body: bytes, deployment: str) -> bytes:
        """The body with `model` set to the deployment (a body whose `model` already is one is sent as it is)."""
        try:
            obj = _any_decoder.decode(body)
        except (msgspec.DecodeError, RecursionError):
            return body  # the upstream answers the 400
        if not isinstance(obj, dict) or obj.get("model") == deployment:
            return body
        obj["model"] = deployment
        return _encoder.encode(obj)

    def route(self, endpoint: str, body: bytes) -> tuple[str, bytes]:
        """Deployments surface: the deployment in the path (the body as sent); otherwise the deployment as `model`."""
        model = self._model(body)
        if model is None:
            return endpoint, body  # the upstream answers the 400
        deployment = self.deployment(model)
        if not self.v1 and endpoint in DEPLOYMENT_ENDPOINTS:
            return f"/deployments/{quote(deployment, safe='')}{endpoint}", body
        return endpoint, self._named(body, deployment)

    def batch_url(self, endpoint: str) -> str:
        """`/chat/completions`, as Azure's batch docs write it; `/v1/chat/completions` on the v1 surface."""
        return "/v1" + endpoint if self.v1 else endpoint

    def line_body(self, body: bytes) -> bytes:
        """A batch line names its Global Batch deployment as `model`."""
        model = self._model(body)
        return body if model is None else self._named(body, self.deployment(model))

    async def uploaded(self, file_id: str, status: str | None) -> None:
        """Wait until Azure has processed the input file; one that failed, or is still pending after a minute or
        so, fails this attempt (the batcher tries again)."""
        for attempt in range(FILE_WAIT_ROUNDS):
            if status not in FILE_WAITING:
                break
            await asyncio.sleep(backoff(attempt))
            found = _file_status_decoder.decode(await self._json("GET", f"/files/{file_id}"))
            status = found.status
        if status in FILE_WAITING:
            raise UpstreamUnavailable(f"The upstream '{self.name}' did not process the batch input file in time.")
        if status == "error":
            raise UpstreamUnavailable(f"The upstream '{self.name}' could not process the batch input file.")
