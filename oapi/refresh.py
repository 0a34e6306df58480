"""Refresh-ahead: keep the credentials a process uses fresh in the background, so that in steady state no request
waits on a fetch (issue 19).

Without it a token or ticket leaves the store as it enters its margin (oapi/tokens.py), and the unlucky request
that finds it missing waits for the fetch, with every request that arrives meanwhile. With it, each process runs
one refresher thread: every `every` seconds (jittered, so workers do not poll in step) it reads, in one pipelined
round trip, the TTL of each credential that a request of this process used within the last `idle` seconds, and
refreshes each one that leaves the store within `lead` seconds (`CredentialCache.refresh_ahead`): under the
credential's own lock, taken without waiting, so across every worker and host exactly one refresher fetches; the
others find the lock taken, or, once they hold it, the successor already stored.

What it leaves to requests: a credential that is missing (never fetched, dropped after DingTalk refused it, a ticket
dropped after a fetch of unknown outcome), and one whose refreshes kept failing until it left the store. A
credential no request of this process used for `idle` seconds is no longer polled: a corp nobody uses is not kept
warm for ever, and a replaced registration's caches fall out of the list.

The thread starts when the process first uses a credential (a process that serves nothing starts none, a gunicorn
master included) and again in a forked child on its first use; `close()` stops it, and so does interpreter exit,
letting a fetch under way finish. Nothing here knows Flask, the registry or the corps: only caches.
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import threading
import time
import weakref
from typing import Any

import redis

from oapi.errors import OapiError, RegistrationGone
from oapi.tokens import CredentialCache

log = logging.getLogger(__name__)

# How long close() lets a fetch under way finish (its lock frees itself anyway, within the lock TTL).
CLOSE_WAIT = 5.0

_INSTANCES: weakref.WeakSet[Refresher] = weakref.WeakSet()


class Refresher:
    """One process's refresh-ahead thread over the credential caches its requests use."""

    def __init__(self, store: redis.Redis, *, lead: float, every: float, idle: float) -> None:
        if not 0 < every < lead:
            raise ValueError("refresh-ahead needs 0 < every < lead: a due credential must meet at least one pass")
        self._store = store
        self.lead = lead
        self.every = every
        self.idle = idle
        self._watched: dict[CredentialCache[Any], float] = {}  # cache -> monotonic time a request last used it
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _INSTANCES.add(self)

    def watch(self, cache: CredentialCache[Any]) -> None:
        """Keep `cache` fresh from now on, while requests use it (CredentialCache.get calls this)."""
        with self._lock:
            self._watched[cache] = time.monotonic()
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="dtgw-refresh-ahead", daemon=True)
                self._thread.start()

    @property
    def watched(self) -> list[CredentialCache[Any]]:
        """The caches polled now (for the support console and tests)."""
        with self._lock:
            return list(self._watched)

    def close(self) -> None:
        """Stop the thread, letting a fetch under way finish (bounded)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT)

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.every * random.uniform(0.75, 1.25)):
            try:
                self.run_once()
            except Exception as e:  # the store is down or refuses: requests meet it too; try again next pass
                if not failing:
                    log.warning("refresh ahead paused: %s: %s", type(e).__name__, e)
                failing = True
            else:
                if failing:
                    log.warning("refresh ahead running again")
                failing = False

    def run_once(self) -> int:
        """One pass: refresh each recently used credential that leaves the store within `lead`; how many it fetched."""
        caches = self._recently_used()
        if not caches:
            return 0
        pipe = self._store.pipeline(transaction=False)
        for cache in caches:
            pipe.pttl(cache.key)
        ttls = [int(ttl) for ttl in pipe.execute()]
        # The one that leaves soonest first; a missing one (-2) is left to the request that needs it.
        due = sorted((ttl, i) for i, ttl in enumerate(ttls) if 0 <= ttl < self.lead * 1000)
        fetched = 0
        for _, i in due:
            if self._stop.is_set():
                break
            cache = caches[i]
            try:
                if cache.refresh_ahead(self.lead) is not None:
                    fetched += 1
            except RegistrationGone:
                self._forget(cache)  # the corp was removed: nothing to keep warm
            except OapiError as e:
                # Met again next pass while the credential is due; a configuration error is remembered and skipped.
                # (A replaced registration's cache holds nothing: the registry dropped it, so it is never due.)
                log.warning(
                    "refresh ahead corp=%s pipeline=%s failed: %s errcode=%s",
                    cache.corpid,
                    cache.pipeline,
                    type(e).__name__,
                    e.errcode,
                )
        return fetched

    def _recently_used(self) -> list[CredentialCache[Any]]:
        """The caches used within `idle`, one per store key: the most recently used (a client rebuilt for a re-read
        registration has a new cache of the same key, and the old one is left unused)."""
        now = time.monotonic()
        newest: dict[str, tuple[float, CredentialCache[Any]]] = {}
        with self._lock:
            for cache in list(self._watched):
                if cache.used:
                    cache.used = False  # the next request's get() tells us again
                    self._watched[cache] = now
                elif now - self._watched[cache] > self.idle:
                    del self._watched[cache]
                    continue
                used_at = self._watched[cache]
                if cache.key not in newest or newest[cache.key][0] <= used_at:
                    newest[cache.key] = (used_at, cache)
        return [cache for _, cache in newest.values()]

    def _forget(self, cache: CredentialCache[Any]) -> None:
        with self._lock:
            self._watched.pop(cache, None)

    def _reset_after_fork(self) -> None:
        # The thread belongs to the parent. Clearing the marks makes the child's first use of each cache watch it
        # again, which starts the child's own thread.
        self._lock = threading.Lock()
        closed = self._stop.is_set()
        self._stop = threading.Event()
        if closed:
            self._stop.set()
        self._thread = None
        for cache in self._watched:
            cache.used = False


def _after_fork() -> None:
    for refresher in list(_INSTANCES):
        refresher._reset_after_fork()


def _close_all() -> None:
    for refresher in list(_INSTANCES):
        refresher.close()


os.register_at_fork(after_in_child=_after_fork)
# A gunicorn worker exits through sys.exit: let a fetch under way finish rather than cut it off mid-flight.
atexit.register(_close_all)
