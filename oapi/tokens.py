"""Cached credentials (tokens and tickets) with a single refresh at a time across every process and host.

Layout of one credential, a Redis hash at `dtgw:v1:{CORPID}:<pipeline>` (e.g. `channel:token`):
    v        the credential, sealed for the corp registration whose secrets fetched it (kit/keys.py), so
             a dump of Redis shows no usable token, and another registration cannot use it
    fp       a short fingerprint, for logs, the console and compare-and-delete
    exp      when DingTalk expires it (unix seconds)
    fetched  when it was fetched
    gen      a fetch generation from `<key>:gen`; a writer never replaces a higher generation
Its Redis TTL is `expires_in - margin - jitter`, so an entry that exists is always usable.

Every write checks, in the same script, that the corp's registration is still the one the writer fetched for: after
`flask corp add` (replace) or `remove`, a refresh already in flight stores nothing, and a cached value of another
registration is never used. `:gen` has a TTL too; nothing here outlives a removed corp for long.

With a near cache (kit/nearcache.py, on whenever REDIS_URL is set), `peek()` answers from process memory
while Redis reports the hash unchanged, so a page view's ticket read costs no round trip.

Beside it, with the same hash tag: `:lock` (redis-py Lock), `:gen`, `:fail` (a remembered configuration error)
and `:forced` (the forced-refresh cooldown). Every script touches one corp's keys only (Redis Cluster safe).

Tickets (`fetch_invalidates`): a fetch may kill the ticket before it, and a fetch the gateway gave up on may still
be carried out later. So a ticket fetch is never resent after a read timeout (oapi/channel.py), a forced refresh
drops the cached ticket before it fetches, a failed one releases its cooldown, and a fetch that overlapped another
(its lock expired while it was frozen) stores nothing and drops what is cached: what is left cached is never a
ticket that a fetch of ours may have killed, and a dead one that a late request kills is reported by the next page.

Refresh-ahead (oapi/refresh.py): a request's `get()` marks the cache used, and the process's refresher then calls
`refresh_ahead()` before the entry leaves the store, under the same lock taken without waiting, so in steady state
no request finds it missing. A ticket refreshed ahead stays in use while its successor is fetched; should that
fetch fail, the ticket is dropped as after a forced refresh. `fetched_meanwhile()` fetches a missing credential
on a thread of its own while a request does something it does not depend on (a cold login's code exchange).
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Generic, Protocol, TypeVar

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from kit.keys import corp_key, registration_key
from kit.nearcache import NearCache
from kit.sealing import Sealer, SealError, fingerprint
from oapi.credential_scripts import (
    DEFAULT_EXPIRES_IN,
    DELETE_IF_SAME,
    GENERATION_TTL_MS,
    NEXT_GENERATION,
    NOT_REGISTERED,
    OVERLAPPED,
    SET_IF_REGISTERED,
    WRITE_IF_NEWER,
)
from oapi.credentials import C, CacheSettings, Credential, Fetch
from oapi.errcodes import is_configuration
from oapi.errors import LockTimeout, OapiError, RegistrationGone, TokenInvalid, UpstreamError, UpstreamUnavailable
from oapi.metrics import CREDENTIAL_FETCHES, CREDENTIAL_REFRESHES, CREDENTIAL_WAITS

log = logging.getLogger(__name__)
HISTORY_KEPT = 5  # tickets kept (sealed) for the signature checker: enough for a few refreshes within one page's life

# True on the refresher's thread while it refreshes ahead: what it fetches (a ticket, and the token the ticket's fetch
# may need) is counted as fetched ahead, and nobody waited for it.
AHEAD: ContextVar[bool] = ContextVar("dtgw_refresh_ahead", default=False)


class Watcher(Protocol):
    """Keeps the credentials a process uses fresh (oapi/refresh.py's Refresher); told when a cache is used."""

    def watch(self, cache: CredentialCache[Any]) -> None: ...


class CredentialCache(Generic[C]):
    """One corp's one pipeline: read from the store, or refresh under a cross-process lock."""

    def __init__(
        self,
        store: redis.Redis,
        sealer: Sealer,
        *,
        corpid: str,
        pipeline: str,
        kind: type[C],
        fetch: Fetch,
        settings: CacheSettings,
        near: NearCache | None = None,
        registration: str | None = None,
        fetch_invalidates: bool = False,
        watcher: Watcher | None = None,
    ) -> None:
        self.store = store
        self.corpid = corpid
        self.pipeline = pipeline
        self.kind = kind
        self.key = corp_key(corpid, *pipeline.split(":"))
        # The registration whose secrets `fetch` uses; None: unchecked (unit tests of the cache alone).
        self.registration = registration
        self._guard = [] if registration is None else [registration_key(corpid)]
        self._sealed_for = f"{self.key}@{registration}" if registration else self.key
        # A fetch may kill the credential it replaces (a JSAPI ticket, dingtalk-oapi.md §2), so a fetch whose outcome
        # is unknown, or that overlapped another, leaves nothing cached that it may have killed.
        self.fetch_invalidates = fetch_invalidates
        self._sealer = sealer
        self._fetch = fetch
        self._settings = settings
        self._near = near
        self._watcher = watcher
        # Set by a request's get(); the refresher clears it on every pass, and forgets a cache left unused for long.
        self.used = False

    # Scripts are only needed when writing or invalidating, never on the hot read path: built on first use.
    @cached_property
    def _write(self) -> Any:
        return self.store.register_script(WRITE_IF_NEWER)

    @cached_property
    def _delete(self) -> Any:
        return self.store.register_script(DELETE_IF_SAME)

    @cached_property
    def _generation(self) -> Any:
        return self.store.register_script(NEXT_GENERATION)

    @cached_property
    def _set_if_registered(self) -> Any:
        return self.store.register_script(SET_IF_REGISTERED)

    # -- reading ---------------------------------------------------------------------------------------------
    def peek(self) -> C | None:
        """The cached credential, or None when missing (never fetches)."""
        near = self._near
        if near is None:
            return self._parse(self.store.hgetall(self.key))
        kept = near.get(self.key)
        if kept is not None and (self.registration is None or kept.registration == self.registration):
            return kept  # type: ignore[no-any-return]
        snapshot = near.snapshot()
        if snapshot is None:
            return self._parse(self.store.hgetall(self.key))
        read_at = time.monotonic()
        pipe = self.store.pipeline(transaction=True)  # value and TTL from the same moment; no extra round trip
        pipe.hgetall(self.key)
        pipe.pttl(self.key)
        try:
            fields, ttl_ms = pipe.execute()
        except redis.exceptions.OutOfMemoryError:
            # A full Redis refuses to queue even reads in MULTI; a plain read still works (kept by nobody).
            return self._parse(self.store.hgetall(self.key))
        if isinstance(fields, list):
            # redis-py 6.4's RedisCluster transactions hand back HGETALL's raw reply (name, value, …), not a dict.
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        cred = self._parse(fields)
        if cred is not None:
            near.put(self.key, cred, ttl_ms=int(ttl_ms), snapshot=snapshot, read_at=read_at)
        return cred

    def _parse(self, fields: dict[str, str]) -> C | None:
        if not fields or "v" not in fields:
            return None
        try:
            value = self._sealer.open(fields["v"], self._sealed_for)
        except SealError:
            # Sealed under another GATEWAY_SECRET_KEY, or for a registration of the corp that was replaced:
            # treat as missing, the next refresh replaces it.
            return None
        return self.kind(
            value=value,
            fingerprint=fields.get("fp", ""),
            expires_at=float(fields.get("exp", 0)),
            fetched_at=float(fields.get("fetched", 0)),
            generation=int(fields.get("gen", 0)),
            registration=self.registration or "",
        )

    def get(self) -> C:
        """A usable credential: the cached one, or a fresh one fetched by exactly one worker."""
        if not self.used:  # at most once per pass of the refresher: the hot path only reads the flag
            self._use()
        cached = self.peek()
        if cached is not None:
            return cached
        if not AHEAD.get():
            CREDENTIAL_WAITS.labels(self.corpid, self.pipeline).inc()
        return self._refresh(newer_than=None)

    def _use(self) -> None:
        if AHEAD.get():
            return  # the refresher's own use (a ticket's fetch reads the token) keeps nothing warm
        self.used = True
        if self._watcher is not None:
            self._watcher.watch(self)

    # -- refreshing ahead (oapi/refresh.py) ------------------------------------------------------------------
    def refresh_ahead(self, lead: float) -> C | None:
        """Fetch a successor now if the cached credential leaves the store within `lead` seconds, unless another
        worker is refreshing it already: then that one's fetch serves everybody, and this returns at once.

        The successor, or None when nothing was fetched: not cached (left to the request that needs it), not due,
        the lock taken elsewhere, or a configuration error remembered. Requests go on using the cached credential
        meanwhile. A ticket's successor fetch that fails may still have killed it, so then the ticket is dropped
        (as a forced refresh drops it first) and the next page fetches alone.
        """
        lock = self._lock()
        if not lock.acquire(blocking=False):
            return None
        try:
            # Re-read under the lock: another worker's refresher may have stored the successor since we looked.
            current = self._due(lead)
            if current is None or self.remembered_failure():
                return None
            ahead = AHEAD.set(True)
            try:
                with keep_alive(lock, self._settings.lock_ttl):
                    return self._fetch_and_store()
            except BaseException:
                if self.fetch_invalidates:
                    self.invalidate(current)
                raise
            finally:
                AHEAD.reset(ahead)
        finally:
            try:
                lock.release()
            except LockError:
                pass  # frozen past the lock's TTL: the write was guarded by its generation

    def _due(self, lead: float) -> C | None:
        """The credential in the store if it leaves the store within `lead` seconds (read past the near cache)."""
        pipe = self.store.pipeline(transaction=True)  # value and TTL from the same moment
        pipe.hgetall(self.key)
        pipe.pttl(self.key)
        fields, ttl_ms = pipe.execute()
        cred = self._parse(fields)
        return cred if cred is not None and 0 <= int(ttl_ms) < lead * 1000 else None

    # -- refreshing ------------------------------------------------------------------------------------------
    def force_refresh(self, cooldown: int) -> C | None:
        """Fetch a new credential now unless one was forced within `cooldown` seconds (then None).

        While the refresh runs, the cooldown is claimed only for the lock's TTL, so a worker killed mid-refresh
        holds it up no longer than its lock; a stored credential starts the full cooldown. A refresh that fails
        releases it: its fetch may have killed what was cached, and the next page's report must be able to repair that.
        """
        forced = self.key + ":forced"
        if self._set(forced, "1", ex=max(1, math.ceil(self._settings.lock_ttl)), nx=True) != 1:
            return None
        current = self.peek()
        if current is not None and self.fetch_invalidates:
            # Whatever its outcome, the fetch may kill this one: pages wait for its successor instead of signing with
            # it, and a worker that dies mid-fetch leaves nothing dead behind.
            self.invalidate(current)
        try:
            fresh = self._refresh(newer_than=current.generation if current else None)
        except BaseException:
            self.store.delete(forced)
            raise
        self._set(forced, "1", ex=max(1, int(cooldown)))
        return fresh

    def cooldown_left(self) -> int:
        """Seconds until another forced refresh is allowed."""
        return max(0, int(self.store.ttl(self.key + ":forced")))

    def invalidate(self, failed: Credential) -> bool:
        """Drop the cached credential only if it is still `failed` (compare-and-delete)."""
        deleted = bool(self._delete(keys=[self.key], args=[failed.fingerprint]))
        self._forget()
        return deleted

    def _forget(self) -> None:
        # Read-your-writes in this process; the other processes hear it from Redis.
        if self._near is not None:
            self._near.drop(self.key)

    def remembered_failure(self) -> dict[str, object] | None:
        """The configuration error a recent fetch met, if still remembered."""
        raw = self.store.get(self.key + ":fail")
        failure = json.loads(raw) if raw else None
        if failure and self.registration is not None and failure.get("registration", "") != self.registration:
            return None  # met with the secrets of a replaced registration
        return failure  # type: ignore[no-any-return]

    def _set(self, key: str, value: str, *, ex: int, nx: bool = False) -> int:
        """SET `key` for this registration only: 1 if set, 0 if NX found it, < 0 if the registration is gone."""
        args = [self.registration or "", value, ex, "nx" if nx else ""]
        return int(self._set_if_registered(keys=[key, *self._guard], args=args))

    def _refused(self, outcome: int) -> OapiError:
        if outcome == NOT_REGISTERED:
            return RegistrationGone(f"Corp {self.corpid!r} is not registered with this gateway")
        return UpstreamUnavailable(
            f"The registration of corp {self.corpid} was replaced during the {self.pipeline} refresh",
            retry_after=1,
            hint="`flask corp add` replaced the corp's registration a moment ago; retry.",
        )

    def _raise_remembered_failure(self) -> None:
        failure = self.remembered_failure()
        if failure:
            raise UpstreamError(
                str(failure.get("message", "")),
                hint=str(failure.get("hint", "")) or None,
                errcode=_remembered_code(failure["errcode"]),
                errmsg=str(failure.get("errmsg", "")),
            )

    def _refresh(self, *, newer_than: int | None) -> C:
        # A configuration error (wrong secret, IP whitelist) is remembered briefly: a hundred workers asking
        # again cannot fix it, and hammering gettoken gets the corp throttled.
        self._raise_remembered_failure()
        lock = self._lock()
        deadline = time.monotonic() + self._settings.lock_wait
        while not lock.acquire(blocking=False):
            # Someone else is fetching: watch the cache rather than queueing on the lock, so every waiter
            # returns as soon as the one fetch lands.
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"The {self.pipeline} refresh for corp {self.corpid} did not finish in time",
                    retry_after=1,
                )
            time.sleep(self._settings.poll)
            cached = self.peek()
            if cached is not None and (newer_than is None or cached.generation > newer_than):
                return cached
            self._raise_remembered_failure()
        try:
            cached = self.peek()
            if cached is not None and (newer_than is None or cached.generation > newer_than):
                return cached
            self._raise_remembered_failure()
            with keep_alive(lock, self._settings.lock_ttl):
                return self._fetch_and_store()
        finally:
            try:
                lock.release()
            except LockError:
                # We were frozen past the lock's TTL (the keep-alive could not run); the write above was
                # guarded by its generation.
                pass

    def _lock(self) -> Lock:
        # thread_local=False: the keep-alive thread renews the lock on the fetching thread's behalf.
        return self.store.lock(self.key + ":lock", timeout=self._settings.lock_ttl, blocking=False, thread_local=False)

    def _fetch_and_store(self) -> C:
        generation = int(
            self._generation(
                keys=[self.key, self.key + ":gen", *self._guard], args=[self.registration or "", GENERATION_TTL_MS]
            )
        )
        if generation < 0:
            raise self._refused(generation)
        started = time.time()
        try:
            value, expires_in = self._fetch()
        except TokenInvalid:
            CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "error").inc()
            raise
        except UpstreamError as e:
            CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "error").inc()
            if is_configuration(e.errcode):
                failure = {"errcode": e.errcode, "errmsg": e.errmsg, "message": e.message, "hint": e.hint}
                failure["registration"] = self.registration or ""
                self._set(self.key + ":fail", json.dumps(failure), ex=self._settings.fail_ttl)
            log.warning("fetch corp=%s pipeline=%s failed errcode=%s", self.corpid, self.pipeline, e.errcode)
            raise
        except Exception:
            CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "error").inc()
            raise
        lifetime = int(expires_in) if expires_in else DEFAULT_EXPIRES_IN
        ttl = self._ttl(lifetime)
        cred = self.kind(
            value=value,
            fingerprint=fingerprint(value),
            expires_at=started + lifetime,
            fetched_at=started,
            generation=generation,
            registration=self.registration or "",
        )
        written = self._write(
            keys=[self.key, self.key + ":gen", *self._guard],
            args=[
                generation,
                self._sealer.seal(value, self._sealed_for),
                f"{cred.expires_at:.3f}",
                f"{cred.fetched_at:.3f}",
                cred.fingerprint,
                int(ttl * 1000),
                self.registration or "",
                "1" if self.fetch_invalidates else "0",
            ],
        )
        self._forget()
        if written < 0:
            # Replaced or removed while we fetched: nothing stored, and not ours to hand out.
            CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "error").inc()
            raise self._refused(written)
        if written == OVERLAPPED:
            # Our lock expired mid-fetch (we were frozen or starved) and another worker fetched too.
            CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "error").inc()
            log.warning(
                "fetch corp=%s pipeline=%s gen=%s overlapped another fetch: kept neither, dropped the cached one",
                self.corpid,
                self.pipeline,
                generation,
            )
            raise LockTimeout(
                f"The {self.pipeline} refresh for corp {self.corpid} overlapped another one; retry", retry_after=1
            )
        CREDENTIAL_FETCHES.labels(self.corpid, self.pipeline, "ok").inc()
        if written and self.fetch_invalidates:
            self._remember(cred, lifetime)
        CREDENTIAL_REFRESHES.labels(self.corpid, self.pipeline, "ahead" if AHEAD.get() else "request").inc()
        log.info(
            "fetched corp=%s pipeline=%s fp=%s gen=%s ttl=%ss%s",
            self.corpid,
            self.pipeline,
            cred.fingerprint,
            generation,
            int(ttl),
            "" if written else " (a newer one was already stored; kept it)",
        )
        if not written:
            newer = self.peek()
            if newer is not None:
                return newer
        return cred

    # -- ticket history (issue 22) ----------------------------------------------------------------------------
    # The last few tickets, each sealed as the cached one is, for the support console's signature checker: a page
    # that failed with 52013 was signed with the ticket current *then*, which a refresh since may have replaced.
    # Kept no longer than a ticket lives; dropped with the corp (`flask corp remove` / replace).
    def _remember(self, cred: C, lifetime: int) -> None:
        item = {
            "gen": cred.generation,
            "fp": cred.fingerprint,
            "fetched": round(cred.fetched_at, 3),
            "exp": round(cred.expires_at, 3),
            "v": self._sealer.seal(cred.value, self._sealed_for + ":history"),
        }
        key = self.key + ":history"
        pipe = self.store.pipeline(transaction=True)
        pipe.lpush(key, json.dumps(item))
        pipe.ltrim(key, 0, HISTORY_KEPT - 1)
        pipe.expire(key, max(60, lifetime))
        try:
            pipe.execute()
        except redis.exceptions.RedisError as e:  # the history serves support only: never fail a fetch for it
            log.warning(
                "ticket history corp=%s pipeline=%s not kept (%s)", self.corpid, self.pipeline, type(e).__name__
            )

    def history(self) -> list[C]:
        """The recently fetched credentials of a pipeline that keeps them (tickets), newest generation first."""
        kept: dict[int, C] = {}
        for raw in self.store.lrange(self.key + ":history", 0, HISTORY_KEPT - 1):
            try:
                item = json.loads(raw)
                value = self._sealer.open(str(item["v"]), self._sealed_for + ":history")
            except (ValueError, KeyError, TypeError, SealError):
                continue  # another registration's, or another secret key's: not this corp's tickets
            kept.setdefault(
                int(item["gen"]),
                self.kind(
                    value=value,
                    fingerprint=str(item.get("fp", "")),
                    expires_at=float(item.get("exp", 0)),
                    fetched_at=float(item.get("fetched", 0)),
                    generation=int(item["gen"]),
                    registration=self.registration or "",
                ),
            )
        return [kept[g] for g in sorted(kept, reverse=True)]

    def _ttl(self, lifetime: int) -> float:
        margin = self._settings.margin + random.uniform(0, self._settings.jitter)
        if lifetime > margin * 2:
            return lifetime - margin
        # DingTalk handed out something short-lived: keep it for half its life rather than not at all.
        return max(1.0, lifetime / 2)


def _remembered_code(raw: object) -> int | str:
    """A remembered errcode as it was: an oapi int, or a v1.0 string code."""
    if isinstance(raw, int):
        return raw
    text = str(raw)
    return int(text) if text.lstrip("-").isdigit() else text


@dataclass(frozen=True)
class Credentials:
    """Where and how this process caches credentials; every corp's clients share it."""

    store: redis.Redis
    sealer: Sealer
    settings: CacheSettings = CacheSettings()
    near: NearCache | None = None
    # Set for one registration of a corp (corp/runtime.py binds each client to its Corp's): see the module doc.
    registration: str | None = None
    watcher: Watcher | None = None  # the process's refresher (oapi/refresh.py), if refreshing ahead

    def for_registration(self, registration: str) -> Credentials:
        """The same caches, reading and writing only what belongs to this registration of the corp."""
        return replace(self, registration=registration)

    def cache(
        self, corpid: str, pipeline: str, kind: type[C], fetch: Fetch, *, fetch_invalidates: bool = False
    ) -> CredentialCache[C]:
        """The cache of one corp's one pipeline, by its `Pipeline.key` (`channel:token`, `channel:ticket`, …)."""
        return CredentialCache(
            self.store,
            self.sealer,
            corpid=corpid,
            pipeline=pipeline,
            kind=kind,
            fetch=fetch,
            settings=self.settings,
            near=self.near,
            registration=self.registration,
            fetch_invalidates=fetch_invalidates,
            watcher=self.watcher,
        )


@contextmanager
def keep_alive(lock: Lock, ttl: float) -> Iterator[None]:
    """Renew `lock` every ttl/3 while the block runs.

    A fetch can outlast any fixed TTL (timeouts, urllib3 retries, -1 retries, a nested token fetch). If the lock
    expired meanwhile, a second worker would fetch too, and where a fetch invalidates the previous ticket the
    two fetches race over which ticket is alive. Renewing keeps the lock for exactly as long as its holder is
    alive and working; a holder that dies or freezes stops renewing and the lock frees itself within `ttl`.
    """
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl / 3):
            try:
                lock.reacquire()
            except (LockError, redis.exceptions.RedisError):
                return  # lost (we were frozen past the TTL): the generation guard takes over

    thread = threading.Thread(target=renew, name="dtgw-lock-keep-alive", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=1)


T = TypeVar("T")


class Meanwhile(Generic[C]):
    """A credential being fetched on a thread of its own while a request does something else (fetched_meanwhile)."""

    def __init__(self, cache: CredentialCache[C]) -> None:
        self.cache = cache
        self.failure: Exception | None = None

    def fetch(self) -> None:
        try:
            self.cache.get()
        except Exception as e:  # kept for the request's own use of the credential, in its own step
            self.failure = e
            cache = self.cache
            log.info("fetch meanwhile corp=%s pipeline=%s failed: %s", cache.corpid, cache.pipeline, type(e).__name__)

    def then(self, call: Callable[[str], T]) -> Callable[[str], T]:
        """`call`, which needs the credential: it first meets the fetch's failure, as it would have met it fetching
        the credential itself, unless another worker has stored one since."""

        def needing_it(arg: str) -> T:
            failure = self.failure
            if failure is not None and self.cache.peek() is None:
                raise failure
            return call(arg)

        return needing_it


@contextmanager
def fetched_meanwhile(cache: CredentialCache[C]) -> Iterator[Meanwhile[C]]:
    """While the block runs, fetch `cache`'s credential on a thread of its own if it is not cached, so that a cold
    start waits for the longer of the two, not for both one after the other.

    For a credential the block may need only later, or not at all (a cold login needs the corp token after the
    code exchange, and only for a follower whose link is not cached): whatever the fetch meets stays on its thread
    and is met by `Meanwhile.then(call)`, the call that needs the credential, so the request fails as it would have
    without this, at the same step. The thread is joined before the block's outcome, good or bad, goes on; each
    step of a fetch is bounded (upstream timeouts, the lock wait).
    """
    meanwhile = Meanwhile(cache)
    if cache.peek() is not None:
        yield meanwhile
        return
    # In a copy of the request's context, so that the fetch's log lines carry the request's id.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(meanwhile.fetch,), name="dtgw-fetch-meanwhile", daemon=True)
    thread.start()
    try:
        yield meanwhile
    finally:
        thread.join()


def with_token(cache: CredentialCache[C], call: Callable[[C], T]) -> T:
    """Run `call` with a cached token; if DingTalk refuses it, refresh once and retry once.

    A persistent refusal therefore costs exactly two calls of the API, and never recurses.
    """
    token = cache.get()
    try:
        return call(token)
    except TokenInvalid:
        cache.invalidate(token)
        log.info(
            "token refused corp=%s pipeline=%s fp=%s: refreshing once",
            cache.corpid,
            cache.pipeline,
            token.fingerprint,
        )
    return call(cache.get())
