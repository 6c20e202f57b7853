"""Who is calling: the caller's key from its headers, the tenant it names, and the `/metrics` token.

Every function takes the request's headers (a mapping with lower-case names; a Litestar request's headers are
case-insensitive), so none of them needs a request.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import TYPE_CHECKING

from router.core.errors import AuthenticationFailed

if TYPE_CHECKING:
    from router.core.settings import Settings


def bearer(headers: Mapping[str, str]) -> str | None:
    """The key from `Authorization: Bearer ...` (or `api-key`, as Azure clients send it, or `x-api-key`, as the
    `anthropic` SDKs do)."""
    value = headers.get("authorization")
    if value:
        scheme, _, key = value.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else None
    return headers.get("api-key") or headers.get("x-api-key")


class Auth:
    """Who calls: the tenant a caller's key names, and whether it may read `/metrics`."""

    def __init__(self, settings: Settings, metrics_token: str | None) -> None:
        self.settings = settings
        self.key_index = settings.key_index()
        self.metrics_token = metrics_token
        """The bearer token `/metrics` requires (`metrics_token_env`), or None when it is open."""

    def authenticate(self, headers: Mapping[str, str]) -> str:
        """The caller's tenant, or a 401."""
        tenant = self.settings.tenant_for_key(bearer(headers), self.key_index)
        if tenant is None:
            raise AuthenticationFailed()
        return tenant

    def authorize_metrics(self, headers: Mapping[str, str], cookie: str | None = None) -> None:
        """A 401 unless `/metrics` is open or the caller sent its bearer token (the status page, `GET /ui`, takes
        it from its cookie too)."""
        if not self.metrics_token_ok(bearer(headers) or cookie):
            raise AuthenticationFailed("`/metrics` and `/ui` need the bearer token named by `metrics_token_env`.")

    def metrics_token_ok(self, given: str | None) -> bool:
        """Whether `given` opens `/metrics` and `/ui` (anything does while they are open)."""
        expected = self.metrics_token
        return expected is None or hmac.compare_digest((given or "").encode(), expected.encode())
