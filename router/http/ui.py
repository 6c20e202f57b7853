"""`GET /ui`: the live status page, server-rendered (Jinja templates in `http/templates/`) and refreshed by htmx
(vendored in `http/static/`, served at `/ui/static/`, so nothing comes from a CDN and nothing is built).

The page is behind the `/metrics` token (`metrics_token_env`), open when `/metrics` is. A browser cannot send a
bearer header, so `/ui?token=...` checks the token once, puts it in an HttpOnly, same-site cookie scoped to `/ui`,
and redirects to `/ui` (the token leaves the address bar and the history); a bearer header works as for `/metrics`.
The full page loads once; htmx then fetches `/ui` every few seconds with `HX-Request` and swaps in the panels only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from litestar import Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar_htmx import HTMXRequest

from router.core.errors import AuthenticationFailed

if TYPE_CHECKING:
    from router.http.auth import Auth
    from router.http.status import Status

HERE = Path(__file__).parent
COOKIE = "hybrid_router_ui"
REFRESH_S = 3
"""How often the page asks for fresh panels."""


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The status page's templates, with the filters that format its numbers."""

    def configure(engine: JinjaTemplateEngine) -> None:
        engine.engine.filters.update(usd=usd, seconds=seconds, utc=utc, share=share)

    return TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine, engine_callback=configure)


def usd(value: float) -> str:
    """Dollars to the micro-dollar (a deferred call can save a few of them): `$0.000150`, `-$0.000020`."""
    return f"{'-' if value < 0 else ''}${abs(value):,.6f}"


def seconds(value: float | None) -> str:
    """A duration the way a person reads it: `0.8 s`, `42 s`, `3 min 5 s`, `2 h 10 min`; `-` for none."""
    if value is None:
        return "-"
    value = max(0.0, value)
    if value < 10:
        return f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    whole = round(value)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def utc(value: float | None) -> str:
    """A Unix time as `HH:MM:SS` UTC (the page shows the day once)."""
    return "-" if value is None else time.strftime("%H:%M:%S", time.gmtime(value))


def share(part: float, whole: float) -> float:
    """`part` as a percentage of `whole`, for the bars (0 when there is nothing)."""
    return 0.0 if whole <= 0 else max(0.0, min(100.0, 100.0 * part / whole))


def static_files() -> Any:
    """`/ui/static/htmx.min.js` and the stylesheet, from the package (open: they hold no data)."""
    return create_static_files_router(path="/ui/static", directories=[HERE / "static"], include_in_schema=False)


def make_handlers(auth: Auth, status: Status) -> list[Any]:
    """`GET /ui` (the page, or its panels for htmx) over `Status`."""

    @get("/ui", request_class=HTMXRequest)
    async def page(request: HTMXRequest, token: FromQuery[str | None] = None) -> Template | Redirect | Response[Any]:
        if token is not None:
            if not auth.metrics_token_ok(token):
                raise AuthenticationFailed("`/ui` needs the bearer token named by `metrics_token_env`.")
            cookie = Cookie(key=COOKIE, value=token, path="/ui", httponly=True, samesite="strict")
            return Redirect(path="/ui", status_code=303, cookies=[cookie])
        auth.authorize_metrics(request.headers, request.cookies.get(COOKIE))
        context = {"s": await status.snapshot(), "refresh_s": REFRESH_S}
        name = "ui_panels.html.j2" if request.htmx else "ui.html.j2"
        return Template(template_name=name, context=context, headers={"Cache-Control": "no-store"})

    return [page, static_files()]
