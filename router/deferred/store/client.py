"""The Redis client for a URL: one server over a blocking pool, or a Redis Cluster seeded from its nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import Any, TypeAlias

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.event import EventDispatcherInterface
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.typing import EncodableT

from router.core.errors import ConfigError

RedisClient: TypeAlias = Redis | RedisCluster
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
POOL_WAIT_S = 30.0
DEFAULT_PORT = 6379

# Set while a task holds a turn, so a pipeline that retries one of its commands through the client on a
# redirect (MOVED/ASK) does not wait for a second turn and deadlock against itself.
_holding: ContextVar[bool] = ContextVar("router_redis_cluster_turn", default=False)


def connect(url: str, *, max_connections: int) -> RedisClient:
    """A lazily connecting client: `redis+cluster://h:p[,h:p...]` gives a RedisCluster, any other URL one server."""
    scheme, _, rest = url.partition("://")
    if scheme.lower() in CLUSTER_SCHEMES:
        return _cluster(CLUSTER_SCHEMES[scheme.lower()], rest, max_connections)
    # The pool connects lazily, on the serving loop; `close` closes it.
    # A blocking pool: a burst of callers waits for a connection instead of failing with "too many connections".
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=POOL_WAIT_S)
    return Redis(connection_pool=pool)


async def close(client: RedisClient) -> None:
    """Close the client and every connection it opened (the pool, or each cluster node's)."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)


def _cluster(scheme: str, rest: str, max_connections: int) -> RedisCluster:
    """A cluster client from `[user:pass@]host:port[,host:port...][/0][?options]`."""
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    userinfo, at, hosts = rest[:cut].rpartition("@")
    seeds = [_host_port(item) for item in hosts.split(",")]
    # The first node goes through `from_url`, which reads the credentials, TLS and query options and applies them
    # to every node; the others only seed discovery (any one reachable node is enough to find the rest).
    first = f"{scheme}://{userinfo}{at}{hosts.split(',')[0]}{rest[cut:]}"
    return _WaitingCluster.from_url(
        first,
        startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
        # +1: the result subscription (`Waiters`) keeps one connection of its node for itself.
        max_connections=max_connections + 1,
        max_in_flight=max_connections,
    )


def _host_port(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or "]" in port:  # no port, or a bare bracketed IPv6 address
        host, port = item.strip(), str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigError(
            "redis_url", None, "a cluster URL lists its nodes as redis+cluster://host:port[,host:port...]"
        )
    return host, int(port)


class _WaitingCluster(RedisCluster):
    """A RedisCluster whose callers wait for a turn, as with a BlockingConnectionPool, instead of failing."""

    # redis-py's cluster client raises MaxConnectionsError at once when a node's connections are all busy (a burst
    # of admissions did, in tests); a semaphore over commands and pipelines bounds what is in flight instead.

    def __init__(self, *args: Any, max_in_flight: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(max_in_flight)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold one of the client's turns for a command or a pipeline (re-entrant within a task)."""
        if _holding.get():
            yield
            return
        try:
            async with asyncio.timeout(POOL_WAIT_S):
                await self._turns.acquire()
        except TimeoutError as exc:
            raise RedisConnectionError("No connection available.") from exc
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)
            self._turns.release()

    async def execute_command(self, *args: EncodableT, **kwargs: Any) -> Any:
        """Run a command in a turn."""
        async with self.turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        """A pipeline whose `execute` runs in a turn."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # raises: redis-py refuses shard hints on a cluster
        return _WaitingPipeline(self, transaction)


class _WaitingPipeline(ClusterPipeline):
    """A cluster pipeline that takes its client's turn while it executes."""

    cluster_client: _WaitingCluster
    _event_dispatcher: EventDispatcherInterface  # never set or read; redis-py's typing Protocol declares it

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        """Send the queued commands (split by node, or as one MULTI on one slot) in a turn."""
        async with self.cluster_client.turn():
            return await super().execute(raise_on_error, allow_redirections)
