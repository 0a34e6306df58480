"""A process-local copy of hot store entries that Redis itself keeps coherent (server-assisted client caching).

Why: `/channel/config` reads the corp's JSAPI ticket on every page view, and that Redis round trip was the
largest part of the gateway's own cost per request. A plain in-process TTL cache is not an option: after another
worker refreshes the ticket (which may kill the old one, `dingtalk-oapi.md` §2) it would go on signing with the
dead ticket until its TTL ran out. So an entry here lives exactly as long as Redis says its key is unchanged:

- One connection per process runs `CLIENT TRACKING on REDIRECT <itself> BCAST PREFIX dtgw:v1:` and subscribes
  to `__redis__:invalidate` (the RESP2 form, Redis >= 6). Redis then announces every write, delete, expiry,
  eviction and flush of a gateway key, by whichever client or script, and even by hand in redis-cli.
- An announced key is dropped. Every entry is dropped when that connection is lost, and nothing is served from
  memory until it is subscribed again: tracking and subscription share the connection, so they die together.
- A store read that raced with an announcement is not kept (`snapshot()` / `put()` compare a sequence number).
- An entry is never served past the TTL its key had when it was read.
- The connection is pinged every `ping_every` seconds, and entries are served only while Redis was heard within
  `stale_after` seconds: a connection that dies silently (no RST) cannot keep stale entries alive for longer.

What remains is the window every shared cache has: a write is announced a moment after Redis applies it. Redis
queues the announcement before it answers the writer, but the listener is a Python thread and must get the GIL
to act on it: under 3 ms when the worker is idle, 10-20 ms under the benchmark's load, and in a review's test with
four CPU-bound threads per process p50 45 ms, p99 about 170 ms (a store read per request raced a write by up to
~15 ms in the same test). For the ticket that is the time after a refresh during which another worker may still
sign with the old one; a page that then fails with 52013 reports it and the follower's retry gets a fresh config.
The whole `dtgw:v1:` prefix is watched (the corpid sits in the middle of key names), so every worker hears every
gateway write; cheap, but it adds to the listener's work. SWAPDB is not announced by Redis: do not use it on the
gateway's database.

redis-py has this built in (`cache_config`), but only for RESP3 servers from Redis 7.4 on; Debian 12 ships 7.0.
With an older Redis or one that refuses `CLIENT TRACKING`, the cache never becomes live and every read goes to the
store, as before (a warning says why).

After a failover (Redis Sentinel) the tracking connection is made again, to the new primary (its connection class
asks the sentinels, as the store client's do), and the cache starts empty: the new primary may hold an older value
than the one kept (replication is asynchronous), and announcements of writes made meanwhile were never heard. So
nothing is served from memory that the new primary does not hold. Sentinel closes every client of a primary it
demotes, and the connection dies with a primary that dies; beside that, `primary` (given for a Sentinel store) is
asked every `check_every` seconds, and a tracking connection to any other server is dropped: a primary cut off
from the sentinels but not from this process must not keep the cache alive.

On a Redis Cluster, `ClusterNearCache` (below) keeps one tracking connection per primary.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis

log = logging.getLogger(__name__)

CHANNEL = "__redis__:invalidate"

# Reset in a forked child: the listener thread and its connection belong to the parent (gunicorn --preload).
_INSTANCES: weakref.WeakSet[NearCache] = weakref.WeakSet()


def _after_fork() -> None:
    for cache in list(_INSTANCES):
        cache._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork)


class NearCache:
    """Values of store keys under `prefix`, held in this process while Redis reports the keys unchanged."""

    def __init__(
        self,
        store: redis.Redis,
        prefix: str,
        *,
        ping_every: float = 1.0,
        stale_after: float = 3.0,
        max_backoff: float = 5.0,
        primary: Callable[[], tuple[str, int]] | None = None,
        check_every: float = 1.0,
    ) -> None:
        self._store = store
        self._prefix = prefix
        self._ping_every = ping_every
        self._stale_after = stale_after
        self._max_backoff = max_backoff
        self._entries: dict[str, tuple[Any, float]] = {}
        self._lock = threading.Lock()
        self._seq = 0  # bumped by every announcement and every loss of the connection
        self._live = False
        self._heard = 0.0  # monotonic time Redis last spoke on the tracking connection
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._warned = False
        self._primary = primary
        self._check_every = check_every
        self._server = ""  # host:port the tracking connection is on, while live
        self._flushes = 0  # times everything was dropped because the connection was lost or made again
        self._reason = ""  # why it is not live, for /healthz
        _INSTANCES.add(self)

    # -- the read path -------------------------------------------------------------------------------------------
    def get(self, key: str) -> Any | None:
        """The value kept for `key`, or None (not kept, past its TTL, or the invalidation channel is not live)."""
        entry = self._entries.get(key)
        if entry is None:
            self._ensure_listening()
            return None
        now = time.monotonic()
        if now >= entry[1] or not self._trusted(now) or not self._serves(key):
            return None
        return entry[0]

    def snapshot(self) -> int | None:
        """Call before reading `key` from the store; None means "do not keep what you read"."""
        self._ensure_listening()
        return self._seq if self._trusted(time.monotonic()) else None

    def put(self, key: str, value: Any, *, ttl_ms: int, snapshot: int, read_at: float) -> None:
        """Keep `value`, read from the store at monotonic `read_at` with `ttl_ms` left, unless it was announced
        (or the connection was lost) since `snapshot`."""
        if ttl_ms <= 0:  # no TTL (-1) or gone (-2): nothing to bound the entry by, so do not keep it
            return
        with self._lock:
            if snapshot == self._seq and self._trusted(time.monotonic()) and self._serves(key):
                # read_at is before the read reached Redis, so this deadline is never later than the key's expiry.
                self._entries[key] = (value, read_at + ttl_ms / 1000)

    def drop(self, key: str) -> None:
        """Forget `key` now (this process just wrote it; its own announcement follows)."""
        with self._lock:
            self._seq += 1
            self._entries.pop(key, None)

    @property
    def live(self) -> bool:
        return self._trusted(time.monotonic())

    def status(self) -> str:
        """ "live", or "connecting" (not subscribed yet, or lost and retrying: reads go to the store meanwhile)."""
        self._ensure_listening()
        return "live" if self.live else "connecting"

    def describe(self) -> dict[str, Any]:
        """What it is doing, for /healthz: the server it tracks, how often it emptied itself, why it is not live."""
        live = self.status() == "live"
        return {
            "tracking": self._server if live else None,
            "flushes": self._flushes,
            "reason": None if live else (self._reason or "connecting to the store's invalidation channel"),
        }

    def close(self) -> None:
        """Stop listening and forget everything."""
        self._stop.set()
        conn = self._conn
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            # Wake the listener out of its read; it disconnects on its own thread (a redis-py connection is not
            # safe to close under a reader).
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        self._lose()

    # -- the listener ---------------------------------------------------------------------------------------------
    def _trusted(self, now: float) -> bool:
        return self._live and now - self._heard < self._stale_after

    def _serves(self, key: str) -> bool:
        """True when the server that the store client reads `key` from is one this cache tracks."""
        return True  # one server: the tracking connection is on it (a Sentinel primary is checked by the listener)

    def _ensure_listening(self) -> None:
        if self._thread is not None or self._stop.is_set():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._listen, name="dtgw-near-cache", daemon=True)
                self._thread.start()

    def _reset_after_fork(self) -> None:
        closed = self._stop.is_set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if closed:
            self._stop.set()  # a closed cache stays closed in the child
        self._warned = False
        self._entries.clear()
        self._live = False
        self._seq += 1
        self._thread = None
        self._conn = None

    def _lose(self) -> None:
        with self._lock:
            if self._live:
                self._flushes += 1
            self._live = False
            self._seq += 1
            self._entries.clear()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self._subscribe_and_serve()
                backoff = 0.1
            except Exception as e:  # whatever it is, the answer is the same: not live, and retry
                self._reason = f"{type(e).__name__}: {e}"
                if not self._stop.is_set() and not self._warned:
                    log.warning(
                        "near cache off until the store's invalidation channel is back (%s: %s); reading the "
                        "store on every request meanwhile",
                        type(e).__name__,
                        e,
                    )
                    self._warned = True
            finally:
                self._lose()
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.disconnect()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _connect(self, pool: Any = None) -> Any:
        # Outside the pool: a pooled connection would hold a pool slot for ever (make_connection never gives it
        # back), so reconnects could exhaust max_connections for the request path. And whatever REDIS_URL says,
        # this connection speaks RESP2 (announcements arrive as pub/sub messages) and decodes replies to str.
        pool = pool or self._store.connection_pool
        kwargs = {**pool.connection_kwargs, "protocol": 2, "decode_responses": True}
        return pool.connection_class(**kwargs)

    def _track(self, conn: Any) -> None:
        """Connect `conn`, have Redis announce to it every write under the prefix, and subscribe to that."""
        conn.connect()
        # check_health=False: redis-py's own health check expects "PONG", but a subscribed connection answers a
        # PING with ["pong", ""]; this loop does its own pinging instead.
        conn.send_command("CLIENT", "ID", check_health=False)
        client_id = conn.read_response()
        conn.send_command(
            "CLIENT", "TRACKING", "on", "REDIRECT", client_id, "BCAST", "PREFIX", self._prefix, check_health=False
        )
        conn.read_response()
        conn.send_command("SUBSCRIBE", CHANNEL, check_health=False)
        conn.read_response()

    def _subscribe_and_serve(self) -> None:
        conn = self._connect()
        self._conn = conn
        self._track(conn)
        # A unix socket has a path, not a host and port.
        server = (str(getattr(conn, "host", "") or getattr(conn, "path", "")), int(getattr(conn, "port", 0) or 0))
        if self._primary is not None:
            self._check_primary(server)  # before going live: a server that is not the primary never serves
        with self._lock:
            # Empty on every (re)connection: whatever was kept came from a connection whose announcements are lost,
            # and perhaps from another primary.
            self._entries.clear()
            self._seq += 1
            self._heard = time.monotonic()
            self._live = True
            self._server = f"{server[0]}:{server[1]}"
            self._reason = ""
        if self._warned:
            log.warning("near cache live again")
            self._warned = False
        checked = time.monotonic()
        while not self._stop.is_set():
            if conn.can_read(timeout=self._ping_every):
                self._handle(conn.read_response())
            elif time.monotonic() - self._heard > 2 * self._stale_after:
                raise redis.exceptions.ConnectionError("no answer to PING on the invalidation channel")
            else:
                conn.send_command("PING", check_health=False)
            if self._primary is not None and time.monotonic() - checked >= self._check_every:
                checked = time.monotonic()
                self._check_primary(server)

    def _check_primary(self, server: tuple[str, int]) -> None:
        try:
            host, port = self._primary()  # type: ignore[misc]
        except redis.exceptions.RedisError:
            return  # the sentinels cannot be asked: that says nothing about where the primary is
        if (host, int(port)) != server:
            raise redis.exceptions.ConnectionError(f"the primary moved to {host}:{port}")

    def _handle(self, message: Any) -> None:
        self._heard = time.monotonic()
        self._invalidate(message)

    def _invalidate(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) < 3 or message[0] != "message":
            return  # the answer to our PING (["pong", ""])
        keys = message[2]
        with self._lock:
            self._seq += 1
            if isinstance(keys, list):
                for key in keys:
                    self._entries.pop(key, None)
            else:  # None: FLUSHDB / FLUSHALL; anything else is not Redis's (a stray PUBLISH): forget everything
                self._entries.clear()


class _Channel:
    """One tracking connection of a ClusterNearCache: to one primary, with its own listener thread."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.live = False
        self.heard = 0.0
        self.conn: Any = None
        self.thread: threading.Thread | None = None
        self.stop = threading.Event()


class ClusterNearCache(NearCache):
    """The near cache on a Redis Cluster: one tracking connection to every primary, and nothing served from memory
    unless every one of them is live.

    Why that is enough:
    - Each node announces the writes of gateway keys it holds (BCAST), and a replica announces the writes it
      receives from its primary. So a write on any tracked primary is heard, and after a graceful failover the
      demoted primary goes on announcing its slots' writes (it replicates them from the new primary) until the
      cache tracks the new one.
    - A lost connection to any node drops everything, as with one Redis (a primary that dies takes it along).
    - Every `check_every` seconds the cluster is asked for its primaries (CLUSTER NODES): any change (a failover, a
      node added for a reshard, even before it holds a slot) drops everything and tracks the new set.
    - An entry is served or kept only while the node that the store client's slot map names for its key is
      tracked: a client that learned of a new primary from a MOVED reads the key from there, and nothing read from
      an untracked node is kept or served.
    """

    def __init__(
        self,
        store: Any,
        prefix: str,
        *,
        ping_every: float = 1.0,
        stale_after: float = 3.0,
        max_backoff: float = 5.0,
        check_every: float = 1.0,
    ) -> None:
        super().__init__(store, prefix, ping_every=ping_every, stale_after=stale_after, max_backoff=max_backoff)
        self._check_every = check_every
        self._channels: dict[tuple[str, int], _Channel] = {}
        self._slots: dict[str, int] = {}  # key -> hash slot: a CRC16 in Python per read would cost more than it saves

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        if info["tracking"] is not None:
            info["tracking"] = ",".join(f"{host}:{port}" for host, port in sorted(self._channels))
        return info

    def _trusted(self, now: float) -> bool:
        channels = list(self._channels.values())
        if not channels:
            return False
        return all(ch.live and now - ch.heard < self._stale_after for ch in channels)

    def _serves(self, key: str) -> bool:
        slot = self._slots.get(key)
        try:
            if slot is None:
                if len(self._slots) > 10_000:
                    self._slots.clear()
                slot = self._slots[key] = self._store.keyslot(key)
            node = self._store.nodes_manager.get_node_from_slot(slot)
        except Exception:  # the client cannot say (its slot map is being read again): do not trust
            return False
        return (node.host, int(node.port)) in self._channels

    def _primaries(self) -> set[tuple[str, int]]:
        """The cluster's primaries now, as CLUSTER NODES lists them (a failed one is not a primary any more)."""
        primaries = set()
        for name, node in self._store.cluster_nodes().items():
            flags = set(str(node.get("flags", "")).split(","))
            if "master" in flags and not flags & {"fail", "noaddr", "handshake"}:
                host, _, port = name.rpartition(":")
                primaries.add((host, int(port)))
        return primaries

    def _listen(self) -> None:
        # The supervisor: watch the set of primaries, and keep one channel per primary.
        while not self._stop.is_set():
            try:
                primaries = self._primaries()
            except Exception as e:  # the cluster cannot be asked: keep what is tracked; channels fail on their own
                self._reason = f"{type(e).__name__}: {e}"
            else:
                if primaries != self._channels.keys():
                    self._retrack(primaries)
            self._stop.wait(self._check_every)
        self._retrack(set())

    def _retrack(self, primaries: set[tuple[str, int]]) -> None:
        with self._lock:
            old, self._channels = self._channels, {address: _Channel(address) for address in primaries}
        self._lose()
        for channel in old.values():
            self._stop_channel(channel)
        if old and primaries:
            log.warning(
                "near cache: the cluster's primaries changed (%s): emptied, tracking them again",
                ",".join(f"{h}:{p}" for h, p in sorted(primaries)),
            )
        for channel in self._channels.values():
            channel.thread = threading.Thread(
                target=self._serve_channel, args=(channel,), name="dtgw-near-cache-node", daemon=True
            )
            channel.thread.start()

    def _stop_channel(self, channel: _Channel) -> None:
        channel.stop.set()
        sock = getattr(channel.conn, "_sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if channel.thread is not None and channel.thread is not threading.current_thread():
            channel.thread.join(timeout=2)

    def _serve_channel(self, channel: _Channel) -> None:
        host, port = channel.address
        backoff = 0.1
        while not channel.stop.is_set() and not self._stop.is_set():
            try:
                kwargs = {k: v for k, v in self._store.get_connection_kwargs().items() if k != "redis_connect_func"}
                node = redis.Redis(host=host, port=port, **kwargs)
                channel.conn = conn = self._connect(node.connection_pool)
                self._track(conn)
                with self._lock:
                    self._entries.clear()
                    self._seq += 1
                    channel.heard = time.monotonic()
                    channel.live = True
                    self._live = all(ch.live for ch in self._channels.values())
                    if self._live:
                        self._reason = ""
                backoff = 0.1
                while not channel.stop.is_set() and not self._stop.is_set():
                    if conn.can_read(timeout=self._ping_every):
                        message = conn.read_response()
                        channel.heard = time.monotonic()
                        self._invalidate(message)
                    elif time.monotonic() - channel.heard > 2 * self._stale_after:
                        raise redis.exceptions.ConnectionError("no answer to PING on the invalidation channel")
                    else:
                        conn.send_command("PING", check_health=False)
            except Exception as e:  # not live, and retry, as with one Redis
                self._reason = f"{host}:{port}: {type(e).__name__}: {e}"
            finally:
                channel.live = False
                if self._channels.get(channel.address) is channel:  # a channel of a set no longer tracked: gone
                    self._lose()
                conn, channel.conn = channel.conn, None
                if conn is not None:
                    conn.disconnect()
            channel.stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def close(self) -> None:
        self._stop.set()
        for channel in list(self._channels.values()):
            self._stop_channel(channel)
        super().close()

    def _reset_after_fork(self) -> None:
        super()._reset_after_fork()
        self._channels = {}
