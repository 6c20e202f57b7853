"""Azure OpenAI's paths on the router, so `openai.AzureOpenAI(azure_endpoint=<router>)` works unchanged.

- `/openai/deployments/{deployment}/chat/completions` (and `completions`, `embeddings`): the deployment names the
  model (`azure_deployments`, else the model of its own name), whatever the body says.
- `/openai/responses`, `/openai/models`, `/openai/files`, `/openai/batches`, and the v1 surface `/openai/v1/...`:
  a `model` that names a deployment is that deployment's model.
- Every path but the v1 surface's needs `?api-version=` (any value), else Azure's 400 `MissingApiVersionParameter`;
  the key may come in `api-key` (as `AzureOpenAI` sends it) or as a Bearer token (`auth.bearer`).
Calls are then the router's own: the same admission, lanes, accounting and errors in OpenAI's shape (Azure's).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, delete, get, post
from litestar.params import FromPath
from litestar.response import Stream

from router.core.errors import BadRequest
from router.core.schema import decode_view, with_fields
from router.http.admission import Arrival
from router.http.error_handlers import JSON

if TYPE_CHECKING:
    from router.http.admission import Admission
    from router.http.auth import Auth
    from router.http.batch_api import BatchApi
    from router.http.reports import Reports

V1 = "/openai/v1"
DEPLOYMENT = "/openai/deployments/{deployment:str}"
DEPLOYMENT_ENDPOINTS = ("/chat/completions", "/completions", "/embeddings")


def check_api_version(request: Request[Any, Any, Any]) -> None:
    """Azure's 400 for a call without `?api-version=` (the v1 surface needs none)."""
    if not request.url.path.startswith(V1 + "/") and not request.query_params.get("api-version"):
        raise BadRequest(
            "The api-version query parameter (?api-version=) is required for all requests.",
            param="api-version",
            code="MissingApiVersionParameter",
        )


def both(path: str) -> list[str]:
    """A resource path on the dated surface and on the v1 surface."""
    return ["/openai" + path, V1 + path]


def make_handlers(
    auth: Auth, admission: Admission, reports: Reports, native: BatchApi, deployments: Mapping[str, str], max_depth: int
) -> list[Any]:
    """The Azure paths' handlers over the services the OpenAI paths use."""

    def named(body: bytes, deployment: str | None) -> bytes:
        """The body asking for the deployment's model (the path's deployment, else the one its `model` names)."""
        view = decode_view(body, max_depth)
        name = deployment if deployment is not None else view.model
        if name is None:
            return body  # admission answers the 400
        model = deployments.get(name, name)
        return body if model == view.model else with_fields(body, model=model)

    async def admit(request: Request[Any, Any, Any], endpoint: str, deployment: str | None) -> Response[bytes] | Stream:
        started = time.perf_counter()
        check_api_version(request)
        tenant = auth.authenticate(request.headers)
        body = named(await request.body(), deployment)
        arrival = Arrival(tenant=tenant, endpoint=endpoint, body=body, headers=request.headers, started=started)
        return await admission.admit(arrival, request.receive)

    def deployment_route(endpoint: str) -> Any:
        @post(DEPLOYMENT + endpoint, status_code=200, name=f"azure-deployment{endpoint}")
        async def handler(request: Request[Any, Any, Any], deployment: FromPath[str]) -> Response[bytes] | Stream:
            return await admit(request, endpoint, deployment)

        return handler

    def model_route(endpoint: str, paths: list[str]) -> Any:
        @post(paths, status_code=200, name=f"azure-model{endpoint}")
        async def handler(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
            return await admit(request, endpoint, None)

        return handler

    calls = [deployment_route(endpoint) for endpoint in DEPLOYMENT_ENDPOINTS]
    calls += [model_route(endpoint, [V1 + endpoint]) for endpoint in DEPLOYMENT_ENDPOINTS]
    calls.append(model_route("/responses", both("/responses")))

    @get(both("/models"))
    async def models(request: Request[Any, Any, Any]) -> Response[bytes]:
        check_api_version(request)
        auth.authenticate(request.headers)
        return Response(await reports.list_models(), media_type=JSON)

    @get(both("/models/{model_id:str}"))
    async def model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
        check_api_version(request)
        auth.authenticate(request.headers)
        return Response(await reports.describe_model(deployments.get(model_id, model_id)), media_type=JSON)

    return [*calls, models, model, *file_handlers(native)]


def file_handlers(native: BatchApi) -> list[Any]:
    """`/openai/files` and `/openai/batches` (and their v1 forms): the native Batch API's handlers."""

    @post(both("/files"), status_code=200, request_max_body_size=None)
    async def files_upload(request: Request[Any, Any, Any]) -> Response[bytes]:
        check_api_version(request)
        return await native.upload_file(request)

    @get(both("/files"))
    async def files_list(request: Request[Any, Any, Any]) -> Response[bytes]:
        check_api_version(request)
        return await native.list_files(request)

    @get(both("/files/{file_id:str}"))
    async def files_retrieve(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Response[bytes]:
        check_api_version(request)
        return await native.retrieve_file(request, file_id)

    @get(both("/files/{file_id:str}/content"))
    async def files_content(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Stream:
        check_api_version(request)
        return await native.file_content(request, file_id)

    @delete(both("/files/{file_id:str}"), status_code=200)
    async def files_delete(request: Request[Any, Any, Any], file_id: FromPath[str]) -> Response[bytes]:
        check_api_version(request)
        return await native.delete_file(request, file_id)

    @post(both("/batches"), status_code=200)
    async def batches_create(request: Request[Any, Any, Any]) -> Response[bytes]:
        check_api_version(request)
        return await native.create_batch(request)

    @get(both("/batches"))
    async def batches_list(request: Request[Any, Any, Any]) -> Response[bytes]:
        check_api_version(request)
        return await native.list_batches(request)

    @get(both("/batches/{batch_id:str}"))
    async def batches_retrieve(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        check_api_version(request)
        return await native.retrieve_batch(request, batch_id)

    @post(both("/batches/{batch_id:str}/cancel"), status_code=200)
    async def batches_cancel(request: Request[Any, Any, Any], batch_id: FromPath[str]) -> Response[bytes]:
        check_api_version(request)
        return await native.cancel_batch(request, batch_id)

    return [
        files_upload, files_list, files_retrieve, files_content, files_delete,
        batches_create, batches_list, batches_retrieve, batches_cancel,
    ]  # fmt: skip
