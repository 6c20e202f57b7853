"""Which upstream serves a model, and which of a caller's headers it receives."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from router.core.errors import NotFound
from router.core.settings import Settings

if TYPE_CHECKING:
    from router.core.settings import Upstream
    from router.providers.base import Provider

NEVER_FORWARDED = frozenset(
    {"authorization", "proxy-authorization", "api-key", "x-api-key", "cookie", "anthropic-version", "host",
     "content-length", "content-type", "content-encoding", "transfer-encoding", "connection", "keep-alive", "te",
     "upgrade", "accept-encoding"}
)  # fmt: skip
"""Credentials and framing: whatever `forward_headers` says, the router sets these itself."""


def _globs(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns) or "(?!)")


class Upstreams:
    """The configured upstreams in order; a model goes to the first whose patterns match it."""

    def __init__(
        self, configs: Sequence[Upstream], providers: dict[str, Provider], settings: Settings | None = None
    ) -> None:
        """`settings` decide which client headers pass (by tenant and auth mode; default: the built-in lists)."""
        self.configs = list(configs)
        self.providers = providers
        self._patterns = [
            (re.compile("|".join(fnmatch.translate(p) for p in cfg.models)), providers[cfg.name]) for cfg in configs
        ]
        self._cache: dict[str, Provider] = {}
        settings = settings or Settings(upstreams=self.configs)
        tenants = {key.tenant for key in settings.keys if key.forward_headers is not None}
        self._forward: dict[tuple[str, str | None], re.Pattern[str]] = {
            (cfg.name, tenant): _globs(settings.forward_headers(cfg, tenant))
            for cfg in configs
            for tenant in (None, *tenants)
        }

    def passed_headers(self, upstream: str, headers: Mapping[str, str], tenant: str | None = None) -> dict[str, str]:
        """The client headers this upstream is configured to receive from this tenant."""
        pattern = self._forward.get((upstream, tenant)) or self._forward[(upstream, None)]
        return {
            name: value
            for name, value in headers.items()
            if (lower := name.lower()) not in NEVER_FORWARDED and pattern.match(lower)
        }

    def for_model_or_none(self, model: str) -> Provider | None:
        """The provider serving `model`, if any."""
        provider = self._cache.get(model)
        if provider is not None:
            return provider
        for pattern, candidate in self._patterns:
            if pattern.match(model):
                if len(self._cache) < 4096:  # model names come from callers: bound the memo
                    self._cache[model] = candidate
                return candidate
        return None

    def for_model(self, model: str) -> Provider:
        """The provider serving `model`, or a 404 naming the model."""
        provider = self.for_model_or_none(model)
        if provider is not None:
            return provider
        raise NotFound(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )

    def config(self, name: str) -> Upstream:
        """The settings of one upstream."""
        return next(cfg for cfg in self.configs if cfg.name == name)

    def timeout_s(self, name: str) -> float:
        """How long a call to this upstream may take (600 s for one no longer configured)."""
        return next((cfg.timeout_s for cfg in self.configs if cfg.name == name), 600.0)

    async def aclose(self) -> None:
        """Close every provider's pool."""
        for provider in self.providers.values():
            await provider.aclose()
