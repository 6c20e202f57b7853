"""The models the deferred lane may queue: priced under an exact name (`PriceTable.listed`), listed by their
upstream's `/models`, or named explicitly.

A model name comes from the caller, and each one the deferred lane accepts becomes a queue in Redis that every
loop walks. So only a known model is deferred; any other call goes to the real-time lane, where a name the
upstream does not know gets the upstream's own `404 model_not_found` and nothing is written to Redis.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from router.core.pricing import PriceTable
from router.core.settings import Upstream
from router.deferred.loops import pace
from router.providers.base import Provider

log = logging.getLogger(__name__)
REFRESH_S = 600.0
"""How often each upstream's `/models` is read again (a model added upstream is deferred from then on)."""
RETRY_S = 30.0
"""How soon a failed `/models` read is tried again."""
MAX_LISTED = 10_000
"""Model ids kept per upstream: the list comes from the network, so it is bounded too."""
_GLOB = re.compile(r"[*?\[]")
_list_decoder = msgspec.json.Decoder(dict[str, Any])


def model_ids(body: bytes) -> list[str]:
    """The ids of an OpenAI-shaped model list (`{"data": [{"id": ...}, ...]}`); empty when it is not one."""
    try:
        items = _list_decoder.decode(body).get("data", [])
    except msgspec.DecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [item["id"] for item in items if isinstance(item, dict) and isinstance(item.get("id"), str)]


class ModelCatalog:
    """Which models each upstream surely serves; `/models` lists are cached and refreshed in the background."""

    def __init__(self, configs: Sequence[Upstream], providers: Mapping[str, Provider], prices: PriceTable) -> None:
        self.providers = providers
        self.prices = prices
        self._explicit = {cfg.name: frozenset(p for p in cfg.models if not _GLOB.search(p)) for cfg in configs}
        self._listed: dict[str, frozenset[str]] = {}
        self._due: dict[str, float] = {}

    def known(self, upstream: str, model: str) -> bool:
        """Whether `model` may be deferred on `upstream` (which the upstream's patterns already chose)."""
        return (
            self.prices.listed(model)
            or model in self._explicit.get(upstream, ())
            or model in self._listed.get(upstream, ())
        )

    def listed(self, upstream: str) -> frozenset[str] | None:
        """The ids the upstream's `/models` gave last, or None when it was never read successfully."""
        return self._listed.get(upstream)

    async def refresh(self, upstream: str) -> bool:
        """Read one upstream's `/models` now; False (and the old list kept) when it could not be read."""
        try:
            answer = await self.providers[upstream].get("/models")
        except Exception as exc:  # RouterError from the adapter, or an answer it could not read
            log.info("could not list the models of %s, will retry: %s", upstream, exc)
            return False
        ids = model_ids(answer.body) if answer.status == 200 else []
        if not ids:
            log.info("upstream %s answered /models with %d and no model list, will retry", upstream, answer.status)
            return False
        self._listed[upstream] = frozenset(ids[:MAX_LISTED])
        return True

    async def run_once(self) -> int:
        """Refresh every upstream whose list is due; returns how many were refreshed."""
        now = asyncio.get_running_loop().time()
        due = [name for name in self.providers if self._due.get(name, 0.0) <= now]
        done = await asyncio.gather(*(self.refresh(name) for name in due))
        for name, ok in zip(due, done, strict=True):
            self._due[name] = now + (REFRESH_S if ok else RETRY_S)
        return sum(done)

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh the lists until `stop` (checked every few seconds; each list is read when it is due)."""
        await pace(stop, 5.0, self.run_once, "catalog")
