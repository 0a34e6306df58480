"""The shared store: a real Redis when REDIS_URL is set, else an in-process fakeredis for one process.

Key names are in kit/keys.py.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from flask import Flask, current_app

log = logging.getLogger(__name__)

EXTENSION = "dtgw.redis"


def connect(url: str | None) -> redis.Redis:
    """Open the store; without a URL, an in-process fake that only one process can share."""
    if url:
        # Short timeouts: a dead Redis must turn into a quick 503, not a hung worker.
        return redis.Redis.from_url(
            url,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            health_check_interval=30,
            decode_responses=True,
        )
    import fakeredis

    log.warning(
        "REDIS_URL is not set: using an in-process store. It is private to this process, so tokens, tickets "
        "and locks are NOT shared: run a single worker, or set REDIS_URL for several workers or hosts."
    )
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def init_app(app: Flask) -> None:
    """Attach the store to the app."""
    app.extensions[EXTENSION] = connect(app.config.get("REDIS_URL"))


def get_store(app: Flask | None = None) -> redis.Redis:
    """The app's store client."""
    return (app or current_app).extensions[EXTENSION]


def ping(client: Any) -> bool:
    """True when the store answers."""
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


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
}


def store_fault(error: redis.exceptions.RedisError) -> str | None:
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
    if isinstance(error, redis.exceptions.ResponseError):
        return _UNAVAILABLE.get(str(error).split(" ", 1)[0])
    return None
