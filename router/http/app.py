"""Wiring: `create_app(settings)` builds the gateway (`gateway.py`), hands each group of handlers the services it
uses, and mounts them with the error handlers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import Litestar, Request, Response
from litestar.exceptions import HTTPException
from redis.exceptions import RedisError
from standardwebhooks import Webhook

from router.core.errors import ConfigError, RouterError
from router.core.settings import Settings
from router.deferred.holding import quiet_held_cuts
from router.http import api, azure_api, batch_api, edge, error_handlers, messages_api, ui
from router.http.disconnect import ClientDisconnected
from router.http.gateway import Gateway
from router.providers.anthropic import AnthropicProvider
from router.providers.azure import AzureProvider
from router.providers.base import Provider
from router.providers.openai import OpenAIProvider
from router.telemetry import tracing

log = logging.getLogger(__name__)
ANTHROPIC_SURFACE = "/v1/messages"


def make_providers(settings: Settings, environ: Mapping[str, str]) -> dict[str, Provider]:
    """One adapter per configured upstream, with its key read from the environment."""
    providers: dict[str, Provider] = {}
    for upstream in settings.upstreams:
        key = environ.get(upstream.api_key_env) if upstream.api_key_env else None
        adapter: Provider
        if upstream.kind == "anthropic":
            adapter = AnthropicProvider(upstream, key or None)
        elif upstream.kind == "azure":
            adapter = AzureProvider(upstream, key or None)
        else:
            adapter = OpenAIProvider(upstream, key or None)
        providers[upstream.name] = adapter
    return providers


def webhook_secret(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The webhook signing secret from the environment, checked now so a bad one fails at start, not per call."""
    name = settings.webhooks.secret_env
    secret = environ.get(name) if name else None
    if not secret:
        if name and settings.webhooks.allowed_hosts:
            log.warning("webhooks are disabled: the environment variable %s is not set", name)
        return None
    try:
        Webhook(secret)
    except Exception as exc:  # binascii.Error, or the package's own for an empty key; never echo the value
        raise ConfigError("<environment>", name, "not a webhook secret (expected whsec_ followed by base64)") from exc
    return secret


def metrics_token(settings: Settings, environ: Mapping[str, str]) -> str | None:
    """The bearer token `/metrics` requires, if `metrics_token_env` names one; a name without a value fails start."""
    name = settings.metrics_token_env
    if name is None:
        return None
    token = environ.get(name, "").strip()
    if not token:
        raise ConfigError("<environment>", name, "metrics_token_env names this variable, but it is not set")
    return token


def by_surface(handler: messages_api.Handler) -> messages_api.Handler:
    """An app-level error handler that answers in Anthropic's shape on Anthropic's surface (`/v1/messages` and every
    path under it, known or not: an unknown route or method never reaches the routes' own handlers)."""
    shaped = messages_api.anthropic_shaped(handler)

    def handle(request: Request[Any, Any, Any], exc: Any) -> Response[bytes]:
        path = str(request.scope.get("path", ""))
        if path == ANTHROPIC_SURFACE or path.startswith(ANTHROPIC_SURFACE + "/"):
            return shaped(request, exc)
        return handler(request, exc)

    return handle


def create_app(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    loops: bool = True,
    metrics_dir: str | None = None,
    serving: bool = False,
) -> Litestar:
    """The router as an ASGI app; `loops=False` leaves the batcher, poller, guard, webhooks and the native-batch
    watcher to the caller (tests); `metrics_dir` is the multiprocess metrics directory of a `serve --workers`
    worker; `serving`: the app of a `serve` process, which tunes the garbage collector once started when
    `gc_tuning` says so (a test process serves many apps: it is left alone)."""
    environ = environ or {}
    quiet_held_cuts()
    gateway = Gateway(
        settings,
        make_providers(settings, environ),
        loops=loops,
        webhook_secret=webhook_secret(settings, environ),
        metrics_token=metrics_token(settings, environ),
        metrics_dir=metrics_dir,
        tracing=tracing.from_environ(environ),
        tune_gc=serving and settings.gc_tuning,
    )
    g = gateway
    anthropic = messages_api.MessagesApi(g.auth, g.admission, g.reports, g.upstreams, g.owners, settings, g.tenants)
    native = batch_api.BatchApi(g.auth, g.upstreams, g.native_store, g.natives, g.native_watcher, settings, g.tenants)
    app = Litestar(
        route_handlers=[
            *api.make_handlers(g.auth, g.admission, g.delivery, g.reports, g.exposition, anthropic),
            *api.model_route_handlers(g.auth, g.model_router),
            *api.background_handlers(g.auth, g.background),
            *messages_api.make_handlers(anthropic),
            *batch_api.make_handlers(native),
            *azure_api.make_handlers(
                g.auth, g.admission, g.reports, native, settings.azure_deployments, settings.limits.max_json_depth
            ),
            *ui.make_handlers(g.auth, g.status),
        ],
        template_config=ui.template_config(),
        exception_handlers={
            RouterError: by_surface(error_handlers.router_error_handler),
            ClientDisconnected: error_handlers.disconnected_handler,
            RedisError: by_surface(error_handlers.redis_error_handler),
            HTTPException: by_surface(error_handlers.http_error_handler),
            Exception: by_surface(error_handlers.internal_error_handler),
        },
        lifespan=[gateway.lifespan],
        middleware=[edge.header_guard(settings.limits)],
        request_max_body_size=settings.limits.max_body_bytes,
        openapi_config=None,
        logging_config=None,
    )
    app.state.gateway = gateway
    return app
