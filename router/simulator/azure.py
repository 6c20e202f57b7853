"""Azure OpenAI's surface of the simulator, over the same handlers as OpenAI's (docs/architecture.md cites the
public references it follows).

- `/openai/deployments/{deployment}/chat/completions` (and `completions`, `embeddings`): the deployment names the
  model, whatever the body says; a deployment the simulator does not serve is Azure's 404 `DeploymentNotFound`.
  Its deployments are named after the models it knows (`gpt-4o-mini`, `gpt-4o-mini-2024-07-18`, ...).
- `/openai/responses`, `/openai/models`, `/openai/files`, `/openai/batches`: the body's `model` is the deployment.
- `/openai/v1/...`: the v1 surface, the OpenAI paths under `/openai`; no `api-version` needed.
- The key comes in `api-key` (or `Authorization: Bearer`, Entra ID's form); every path but the v1 surface's
  needs `?api-version=`, else 400 `MissingApiVersionParameter`.
- A batch's `endpoint` and its lines' `url` are `/chat/completions` (Azure's documented form) or `/v1/...`.
"""

from __future__ import annotations

import msgspec

from router.simulator import catalog
from router.simulator.errors import OpenAIError

PREFIX = "/openai/"
V1_PREFIX = "/openai/v1/"
DEPLOYMENTS_PREFIX = "/openai/deployments/"
DEPLOYMENT_ENDPOINTS = frozenset({"/chat/completions", "/completions", "/embeddings"})
"""The endpoints Azure serves under `/openai/deployments/{deployment}` (the `openai` SDK's own list)."""
_ANY = msgspec.json.Decoder()
_ENCODE = msgspec.json.Encoder()


def is_azure(path: str) -> bool:
    """Whether a request came in on the Azure surface."""
    return path.startswith(PREFIX)


def realtime_paths(endpoint: str) -> list[str]:
    """OpenAI's path of a real-time endpoint (`/chat/completions`) and its Azure forms."""
    if endpoint in DEPLOYMENT_ENDPOINTS:
        azure = f"{DEPLOYMENTS_PREFIX}{{deployment:str}}{endpoint}"
    else:
        azure = "/openai" + endpoint
    return ["/v1" + endpoint, "/openai/v1" + endpoint, azure]


def api_paths(path: str) -> list[str]:
    """OpenAI's path of a resource route (`/files/{file_id:str}`) and its two Azure forms."""
    return ["/v1" + path, "/openai" + path, "/openai/v1" + path]


def canonical(path: str) -> str:
    """The OpenAI path a request on either surface stands for (`/openai/deployments/d/embeddings`:
    `/v1/embeddings`)."""
    if path.startswith(DEPLOYMENTS_PREFIX):
        parts = path.split("/", 4)
        return "/v1/" + parts[4] if len(parts) == 5 else path
    if path.startswith(V1_PREFIX):
        return path[len(PREFIX) - 1 :]
    if path.startswith(PREFIX):
        return "/v1/" + path[len(PREFIX) :]
    return path


def batch_url(url: str) -> str:
    """A batch endpoint or line url in OpenAI's form: Azure documents `/chat/completions`, and takes `/v1/...`."""
    return url if url.startswith("/v1/") else "/v1" + url


def check(path: str, query: bytes, key: str) -> None:
    """Azure's first checks of a request: the `api-version` query (but on the v1 surface), then the key."""
    if not path.startswith(V1_PREFIX) and b"api-version=" not in b"&" + query:
        raise OpenAIError(
            400,
            "The api-version query parameter (?api-version=) is required for all requests.",
            type="invalid_request_error",
            code="MissingApiVersionParameter",
        )
    if not key:
        raise OpenAIError(
            401,
            "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
            "for an active subscription and use a correct regional API endpoint for your resource.",
            type="invalid_request_error",
            code="401",
        )


def deployment_body(deployment: str | None, body: bytes) -> bytes:
    """The body a deployment's call runs: its `model` is the deployment's, whatever the caller put there."""
    if deployment is None:
        return body
    if not catalog.openai_model_exists(deployment):
        raise OpenAIError(
            404,
            "The API deployment for this resource does not exist. If you created the deployment within the last 5 "
            "minutes, please wait a moment and try again.",
            type="invalid_request_error",
            code="DeploymentNotFound",
        )
    try:
        obj = _ANY.decode(body)
    except (msgspec.DecodeError, RecursionError):
        return body  # the endpoint's own decoding answers the 400
    if not isinstance(obj, dict):
        return body
    obj["model"] = deployment
    return _ENCODE.encode(obj)
