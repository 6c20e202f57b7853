"""The evidence of every route in Redis, shared by the router's replicas (one server or a Redis Cluster).

Keys (`P` is the key prefix; a route's key is `<from>><to,...>`, see route.py):
- `P:mr:{<route>|<task>}:ev` (hash): the decayed statistics of one task, for each candidate model, as fields
  `<model>|<stat>` (`t`, `w`, `w2`, `a`, `b`, `aa`, `bb`, `ab`, `ti`, `to`: evidence.Stats). The hash tag keeps
  one route and task in one slot, so one Lua script updates it atomically, decay included, on a Cluster too.
  It expires ten half-lives after its last update (by then its weight is below 0.1%).
- `P:mr:{<route>}:tasks` (set): the tasks with evidence, so a replica can read them all (a separate slot; added
  before the evidence it indexes, so a reader never misses a task that has some).
- `P:mr:{<route>}:clusters` (string, msgpack): the embedding clusters task-less calls are assigned to.

These names move to the router's keys module when model routes are wired into the proxy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from router.core.model_routes import Route
from router.modelroutes.embeddings import Clusters
from router.modelroutes.evidence import Stats, score

RedisClient = Redis | RedisCluster
_FIELDS = ("w", "w2", "a", "b", "aa", "bb", "ab", "ti", "to")
_STATS = dict(zip(_FIELDS, ("w", "w2", "a", "b", "aa", "bb", "ab", "tokens_in", "tokens_out"), strict=True))

# ARGV: now, half-life (s), ttl (s), then groups of (model, asked score, candidate score, tokens in, tokens out,
# weight). Each group decays the model's sums to `now` (never backwards: a replica whose clock is behind adds at
# the stored time) and adds the pair, as evidence.observe does.
OBSERVE = """
local now, half_life, ttl = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local names = {'w', 'w2', 'a', 'b', 'aa', 'bb', 'ab', 'ti', 'to'}
for i = 4, #ARGV, 6 do
  local m = ARGV[i]
  local a, b = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local ti, to, w = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local fields = {m .. '|t'}
  for j = 1, #names do fields[j + 1] = m .. '|' .. names[j] end
  local old = redis.call('HMGET', KEYS[1], unpack(fields))
  local t = tonumber(old[1]) or now
  local f = 1
  if now > t then f = 2 ^ (-(now - t) / half_life); t = now end
  local s = {}
  for j = 1, #names do
    s[j] = (tonumber(old[j + 1]) or 0) * f
  end
  s[2] = s[2] * f
  local add = {w, w * w, w * a, w * b, w * a * a, w * b * b, w * a * b, w * ti, w * to}
  local out = {fields[1], string.format('%.17g', t)}
  for j = 1, #names do
    out[#out + 1] = fields[j + 1]
    out[#out + 1] = string.format('%.17g', s[j] + add[j])
  end
  redis.call('HSET', KEYS[1], unpack(out))
end
redis.call('EXPIRE', KEYS[1], ttl)
return 1
"""


class Observation(msgspec.Struct, frozen=True):
    """One pair of scores for a candidate of a route, on one call of a task."""

    model: str
    asked: float | bool
    candidate: float | bool
    tokens_in: int = 0
    tokens_out: int = 0
    weight: float = 1.0


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_evidence(raw: Mapping[Any, Any]) -> dict[str, Stats]:
    """A task's evidence hash (HGETALL) as candidate model -> Stats."""
    per_model: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        model, _, stat = _text(key).rpartition("|")
        if model:
            per_model.setdefault(model, {})[stat] = float(_text(value))
    out = {}
    for model, stats in per_model.items():
        if "t" in stats:
            fields = {_STATS[name]: stats[name] for name in _FIELDS if name in stats}
            out[model] = Stats(t=stats["t"], **fields)
    return out


class EvidenceStore:
    """Reads and writes model-route evidence under one key prefix."""

    def __init__(self, client: RedisClient, prefix: str = "hr") -> None:
        self.client = client
        self.prefix = prefix

    def evidence_key(self, route: Route, task: str) -> str:
        return f"{self.prefix}:mr:{{{route.key}|{task}}}:ev"

    def tasks_key(self, route: Route) -> str:
        return f"{self.prefix}:mr:{{{route.key}}}:tasks"

    def clusters_key(self, route: Route) -> str:
        return f"{self.prefix}:mr:{{{route.key}}}:clusters"

    async def observe(self, route: Route, task: str, observations: Iterable[Observation], *, now: float) -> int:
        """Add pairs of scores to a task's evidence (one atomic step); returns how many were added."""
        args: list[str | float] = [now, route.half_life_s, int(route.half_life_s * 10)]
        count = 0
        for o in observations:
            if o.model not in route.to:
                raise ValueError(f"{o.model!r} is not a candidate of route {route.key!r}")
            a, b = score(o.asked), score(o.candidate)
            args += [o.model, repr(a), repr(b), o.tokens_in, o.tokens_out, repr(float(o.weight))]
            count += 1
        if count:
            await self.client.sadd(self.tasks_key(route), task)
            # EVAL, not a registered script: the router's scripts module holds every registered script and its
            # wrapper, and OBSERVE moves there when model routes are wired in. Evidence writes are not on the
            # call path (imports, sampled shadow pairs), and Redis caches the compiled script either way.
            await self.client.eval(OBSERVE, 1, self.evidence_key(route, task), *args)
        return count

    async def tasks(self, route: Route) -> list[str]:
        """The route's tasks with evidence (some may have expired since)."""
        members = await self.client.smembers(self.tasks_key(route))
        return sorted(_text(m) for m in members)

    async def evidence(self, route: Route) -> dict[str, dict[str, Stats]]:
        """Every task's evidence: task -> candidate model -> Stats (tasks whose evidence expired are dropped)."""
        tasks = await self.tasks(route)
        if not tasks:
            return {}
        pipe = self.client.pipeline(transaction=False)
        for task in tasks:
            pipe.hgetall(self.evidence_key(route, task))
        raws = await pipe.execute()
        out = {task: parse_evidence(raw) for task, raw in zip(tasks, raws, strict=True) if raw}
        gone = [task for task, raw in zip(tasks, raws, strict=True) if not raw]
        if gone:
            await self.client.srem(self.tasks_key(route), *gone)
        return {task: per_model for task, per_model in out.items() if per_model}

    async def forget(self, route: Route) -> None:
        """Drop all of a route's evidence and clusters."""
        for task in await self.tasks(route):
            await self.client.delete(self.evidence_key(route, task))
        await self.client.delete(self.tasks_key(route), self.clusters_key(route))

    async def save_clusters(self, route: Route, clusters: Clusters) -> None:
        await self.client.set(self.clusters_key(route), msgspec.msgpack.encode(clusters))

    async def clusters(self, route: Route) -> Clusters | None:
        raw = await self.client.get(self.clusters_key(route))
        if raw is None:
            return None
        return msgspec.msgpack.decode(raw.encode() if isinstance(raw, str) else raw, type=Clusters)
