"""The shared store: a real Redis when REDIS_URL is set, else an in-process fakeredis for one process.

REDIS_URL takes four forms (gateway-contract.md; docs/deployment.md says what each guarantees):

    redis://[[user]:password@]HOST[:PORT][/DB]     one Redis (rediss:// for TLS), redis-py's own URL
    redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]
                                                   Redis Sentinel: redis-py's `Sentinel.master_for`, which asks
                                                   the sentinels for the primary on every new connection
    redis+cluster://[[user]:password@]HOST:PORT[,HOST:PORT…]
                                                   Redis Cluster: redis-py's `RedisCluster`

The user and password are the data nodes' (the sentinels are asked without them). Every client has short timeouts:
a dead or switching Redis must turn into a quick 503 (`store_fault`), not a hung worker.

Key names are in kit/keys.py: every key of a corp carries one hash tag, so each script, lock and transaction
touches one cluster slot.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from flask import Flask, current_app
from redis.backoff import ExponentialBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Encoder
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

log = logging.getLogger(__name__)

EXTENSION = "dtgw.redis"

SINGLE, SENTINEL, CLUSTER, IN_PROCESS = "single", "sentinel", "cluster", "in-process"
SENTINEL_SCHEME, CLUSTER_SCHEME = "redis+sentinel", "redis+cluster"

# Every data connection, whichever the form. A command that waits in Redis (WAIT) must return before the socket
# gives up on it (gateway/config.py holds GATEWAY_REPLICA_ACK_TIMEOUT below this).
SOCKET_TIMEOUT = 2.0
_TIMEOUTS: dict[str, Any] = {
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": 1.0,
    "health_check_interval": 30,
}
# A sentinel is asked on every new connection, one after the other until one names the primary: a dead one must
# cost little.
_SENTINEL_TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}


class StoreUrlError(RuntimeError):
    """REDIS_URL is not one of the accepted forms (the message never repeats a password)."""


@dataclass(frozen=True)
class StoreUrl:
    """A parsed `redis+sentinel://` or `redis+cluster://` URL."""

    mode: str
    nodes: tuple[tuple[str, int], ...]
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def credentials(self) -> dict[str, str]:
        return {k: v for k, v in (("username", self.username), ("password", self.password)) if v}


def parse_store_url(url: str) -> StoreUrl:
    """Read a Sentinel or Cluster REDIS_URL; StoreUrlError says what is wrong with it."""
    scheme, sep, rest = url.partition("://")
    mode = {SENTINEL_SCHEME: SENTINEL, CLUSTER_SCHEME: CLUSTER}.get(scheme.lower())
    if not sep or mode is None:
        raise StoreUrlError(
            f"REDIS_URL must start with redis://, rediss://, {SENTINEL_SCHEME}:// or {CLUSTER_SCHEME}://"
        )
    if "?" in rest or "#" in rest:
        raise StoreUrlError(f"REDIS_URL ({scheme}://…) takes no query options (percent-encode ? and # in a password)")
    # urlsplit reads one host only; the comma-separated list is split here, after the userinfo.
    userinfo, at, hostpart = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    hosts, _, path = hostpart.partition("/")
    nodes: list[tuple[str, int]] = []
    for item in hosts.split(","):
        parsed = urlsplit("//" + item.strip())
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise StoreUrlError(f"REDIS_URL ({scheme}://…): every node is HOST:PORT, got {item.strip()!r}")
        nodes.append((parsed.hostname, port))
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    parts = [p for p in path.split("/") if p]
    if mode == CLUSTER:
        if parts:
            raise StoreUrlError("REDIS_URL (redis+cluster://…): a cluster has one database, so the URL has no path")
        return StoreUrl(CLUSTER, tuple(nodes), username=username, password=password)
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise StoreUrlError("REDIS_URL (redis+sentinel://…) ends with /SERVICE or /SERVICE/DB, e.g. /mymaster/0")
    db = int(parts[1]) if len(parts) == 2 else 0
    return StoreUrl(SENTINEL, tuple(nodes), service=unquote(parts[0]), db=db, username=username, password=password)


def connect(url: str | None) -> Any:
    """Open the store; without a URL, an in-process fake that only one process can share."""
    if url and url.partition("://")[0].lower() in (SENTINEL_SCHEME, CLUSTER_SCHEME):
        spec = parse_store_url(url)
        if spec.mode == SENTINEL:
            # redis-py's Sentinel: every new connection asks the sentinels for the primary, and a READONLY answer
            # (a primary that a failover demoted) drops the connection as a ConnectionError, so the next one goes
            # to the new primary. Nothing of the failover is the gateway's own code.
            sentinel = Sentinel(list(spec.nodes), sentinel_kwargs=dict(_SENTINEL_TIMEOUTS), **_TIMEOUTS)
            return sentinel.master_for(spec.service, db=spec.db, decode_responses=True, **spec.credentials())
        return ClusterStore(spec)
    if url:
        return redis.Redis.from_url(url, decode_responses=True, **_TIMEOUTS)
    import fakeredis

    log.warning(
        "REDIS_URL is not set: using an in-process store. It is private to this process, so tokens, tickets "
        "and locks are NOT shared: run a single worker, or set REDIS_URL for several workers or hosts."
    )
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


class ClusterStore:
    """redis-py's RedisCluster, made on first use.

    Why not made at once: RedisCluster reads the slot map when it is made, and raises if no node answers. The
    gateway must start, and answer 503 `store_unavailable`, while the cluster is down, and work once it is back,
    as it does with one Redis. Everything else is RedisCluster's own: the slot map, MOVED/ASK, a failover.
    """

    def __init__(self, spec: StoreUrl) -> None:
        self.spec = spec
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()
        # Scripts hash their text with the client's encoder: the same as RedisCluster's, without connecting.
        self._encoder = Encoder("utf-8", "strict", True)

    @property
    def client(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = RedisCluster(
                            startup_nodes=[ClusterNode(host, port) for host, port in self.spec.nodes],
                            decode_responses=True,
                            # Bounded: a redirect after a failover or a reshard is followed, a dead cluster is a 503
                            # within about a second, never redis-py's default of up to 14 s of backoff.
                            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                            **self.spec.credentials(),
                            **_TIMEOUTS,
                        )
                    except redis.exceptions.RedisClusterException as e:
                        raise redis.exceptions.ConnectionError(f"no node of the cluster answers ({e})") from e
                    _record_only_redirections(self._client)
                client = self._client
        return client

    def get_encoder(self) -> Encoder:
        return self._encoder

    def register_script(self, script: str) -> Any:
        from redis.commands.core import Script

        return Script(self, script)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never for this object's own state (copy, pickle, a half-made instance)
            raise AttributeError(name)
        return getattr(self.client, name)


def _record_only_redirections(client: RedisCluster) -> None:
    """Work around a redis-py bug fixed in 7.1 (redis/redis-py#3815): before it, a transaction that met a connection
    error (a primary that died) stored that error as the slot map's pending MOVED, and every later command of the
    client then failed with AttributeError (a 500) until the process restarted. 7.1 stores redirections only; so
    does this. Nothing to do from 7.1 on (pyproject.toml still allows 6.x: the venv is shared)."""
    if tuple(int(part) for part in redis.__version__.split(".")[:2] if part.isdigit()) >= (7, 1):
        return
    manager = client.nodes_manager
    record = manager.update_moved_exception

    def update_moved_exception(exception: Exception) -> None:
        if isinstance(exception, redis.exceptions.AskError):  # MovedError is one too
            record(exception)

    manager.update_moved_exception = update_moved_exception


def mode_of(store: Any) -> str:
    """SINGLE, SENTINEL, CLUSTER or IN_PROCESS: which kind of store a client talks to."""
    if isinstance(store, ClusterStore | RedisCluster):
        return CLUSTER
    pool = getattr(store, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        return SENTINEL
    if type(store).__module__.startswith("fakeredis"):
        return IN_PROCESS
    return SINGLE


def init_app(app: Flask) -> None:
    """Attach the store to the app."""
    app.extensions[EXTENSION] = connect(app.config.get("REDIS_URL"))


def get_store(app: Flask | None = None) -> Any:
    """The app's store client."""
    return (app or current_app).extensions[EXTENSION]


def ping(client: Any) -> bool:
    """True when the store answers (on a cluster: every primary)."""
    try:
        if mode_of(client) == CLUSTER:
            return bool(client.ping(target_nodes=RedisCluster.PRIMARIES))
        return bool(client.ping())
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False


# -- writes that must survive a failover --------------------------------------------------------------------------


@dataclass(frozen=True)
class Replication:
    """How far a write got: `replicas` connected to the primary when it was made, `acked` of them had it in time."""

    replicas: int
    acked: int

    @property
    def enough(self) -> bool:
        """On a replica when the primary has any: a failover then promotes a replica that has it (see WAIT)."""
        return self.replicas == 0 or self.acked >= 1


def write_replicated(
    store: Any, key: str, queue: Callable[[Any], None], *, timeout: float
) -> tuple[list[Any], Replication]:
    """Run the writes `queue` adds to a pipeline, on the primary that holds `key`; when that primary has replicas,
    wait (at most `timeout` seconds) until one of them has the writes. Return the writes' results and how far
    they got.

    WAIT counts the replicas that acknowledged every earlier write of *its own connection*, so it goes in the same
    pipeline as the writes; on a cluster that is the client of the node holding the key's slot (a RedisCluster
    pipeline sends a keyless WAIT to any node). Replication stays asynchronous: WAIT makes a write survive the
    loss of the primary, not every failure (docs/deployment.md).
    """
    mode = mode_of(store)
    if mode == IN_PROCESS:
        pipe = store.pipeline(transaction=False)
        queue(pipe)
        return pipe.execute(), Replication(0, 0)
    primary = store.get_redis_connection(store.get_node_from_key(key)) if mode == CLUSTER else store
    replicas = _replicas_of(primary)
    pipe = primary.pipeline(transaction=False)
    queue(pipe)
    if replicas:
        pipe.execute_command("WAIT", 1, max(1, int(timeout * 1000)))
    results = pipe.execute()
    acked = int(results.pop()) if replicas else 0
    return results, Replication(replicas, acked)


_warned_no_role = False


def _replicas_of(primary: Any) -> int:
    """How many replicas are connected to this primary: ROLE, else INFO replication (an ACL may forbid either)."""
    global _warned_no_role
    try:
        role = primary.execute_command("ROLE")
        is_primary, replicas = role[0] == "master", len(role[2]) if role[0] == "master" else 0
    except redis.exceptions.NoPermissionError:
        try:
            info = primary.info("replication")
            is_primary, replicas = info.get("role") == "master", int(info.get("connected_slaves", 0))
        except redis.exceptions.NoPermissionError:
            if not _warned_no_role:
                log.warning(
                    "the store's user may run neither ROLE nor INFO: events are recorded without waiting for a "
                    "replica (allow ROLE to the gateway's Redis user, or set min-replicas-to-write)"
                )
                _warned_no_role = True
            return 0
    if not is_primary:
        # A demoted primary we are still connected to; its writes would be refused anyway.
        raise redis.exceptions.ReadOnlyError("the store's primary has become a replica (a failover)")
    return replicas


# -- faults --------------------------------------------------------------------------------------------------------

# Redis is up but refuses writes: full (maxmemory with the noeviction policy), or a replica (READONLY: the gateway
# still talks to a primary that a failover demoted). Reads keep working, so a write that only fills a cache or a
# support trace may be skipped (logged) rather than fail a request that has everything else it needs.
WRITE_REFUSED: tuple[type[redis.exceptions.RedisError], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)

# Other answers of a Redis that is there but cannot serve for now, by the error's first word (redis-py has no
# class for these).
_UNAVAILABLE = {
    "MISCONF": "cannot save to disk, so it refuses writes",
    "NOREPLICAS": "has too few replicas to accept writes",
    "BUSY": "is busy running a script",
    "UNBLOCKED": "is switching roles (a failover)",
}


def store_fault(error: BaseException) -> str | None:
    """Why the store cannot serve for now, in words for a person; None when `error` is a gateway bug instead."""
    if isinstance(error, redis.exceptions.BusyLoadingError):
        return "is loading its data after a restart"
    if isinstance(error, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "is unreachable"
    if isinstance(error, redis.exceptions.OutOfMemoryError):
        return "is full (maxmemory reached, and its policy evicts nothing)"
    if isinstance(error, redis.exceptions.ReadOnlyError):
        return "is a read-only replica (after a failover the gateway must reach the new primary)"
    if isinstance(error, redis.exceptions.ClusterDownError | redis.exceptions.TryAgainError):
        return "is a cluster that is down or resharding"  # MASTERDOWN is a ClusterDownError too
    if isinstance(error, redis.exceptions.SlotNotCoveredError):
        return "is a cluster with slots that no node serves (a primary is down)"
    if isinstance(error, redis.exceptions.ClusterError | redis.exceptions.AskError):
        # RedisCluster gave up following redirections: slots are moving (a failover or a reshard).
        return "is a cluster whose slots are moving (a failover or a reshard)"
    if isinstance(error, redis.exceptions.ResponseError):
        return _UNAVAILABLE.get(str(error).split(" ", 1)[0])
    if isinstance(error, redis.exceptions.RedisClusterException) and str(error).startswith(
        "Redis Cluster cannot be connected"
    ):
        return "is unreachable"  # no node answered while RedisCluster re-read the slot map
    return None
