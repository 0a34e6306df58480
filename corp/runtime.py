"""What every request needs, built once per app (app.py calls build_runtime): settings, store, sealer, upstream
client, corp registry, credential caches, and one pair of API clients per corp registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from corp.registry import Corp, CorpRegistry
from gateway.config import Settings
from gateway.store import CLUSTER, IN_PROCESS, SENTINEL, WRITE_REFUSED, mode_of
from identity.authorizations import Authorizations
from identity.clients import ClientRegistry
from identity.keys import KeyRing
from kit.keys import NAMESPACE
from kit.nearcache import ClusterNearCache, NearCache
from kit.sealing import Sealer
from oapi.apps import CurrentAppClient
from oapi.channel import ChannelClient
from oapi.client import AppClient
from oapi.corp import CorpClient
from oapi.credentials import CacheSettings
from oapi.openapi import OpenApi
from oapi.pacing import Pacer
from oapi.refresh import Refresher
from oapi.tokens import Credentials
from oapi.upstream import Upstream

A = TypeVar("A", bound=AppClient[Any] | CurrentAppClient)


@dataclass
class Runtime:
    """The app's shared clients. Per-corp clients are cheap to build and hold no per-user state."""

    settings: Settings
    store: redis.Redis
    sealer: Sealer
    upstream: Upstream
    openapi: OpenApi  # api.dingtalk.com (v1.0), sharing the upstream's sessions, timeout and backoff
    registry: CorpRegistry
    credentials: Credentials
    keys: KeyRing  # the ES256 keys that sign session and ID tokens (identity/keys.py)
    clients: ClientRegistry  # the OpenID Connect provider's relying parties (identity/clients.py)
    authorizations: Authorizations  # its handles, codes and access tokens (identity/authorizations.py)
    # One client per corp registration, shared by every thread: clients hold no per-user state (house style 4).
    # A re-read registration (a new Corp object, once the registry hears of a change) gets new ones, whose
    # credential caches read and write only what belongs to that registration.
    _channel_clients: dict[str, ChannelClient] = field(default_factory=dict, repr=False)
    _corp_clients: dict[str, CorpClient] = field(default_factory=dict, repr=False)
    _app_clients: dict[str, CurrentAppClient] = field(default_factory=dict, repr=False)

    # Why there is no near cache, for /healthz (empty when there is one).
    near_off_reason: str = ""

    @property
    def near(self) -> NearCache | None:
        return self.credentials.near

    @property
    def refresher(self) -> Refresher | None:
        """The process's refresh-ahead thread's owner (None when off)."""
        watcher = self.credentials.watcher
        return watcher if isinstance(watcher, Refresher) else None

    def near_cache_status(self) -> tuple[str, dict[str, Any]]:
        """The near cache's state ("live", "connecting" or "off") and what it is doing, for /healthz."""
        if self.near is None:
            return "off", {"tracking": None, "flushes": 0, "reason": self.near_off_reason}
        return self.near.status(), self.near.describe()

    def close(self) -> None:
        """Stop refreshing ahead; release pooled connections to DingTalk and the store."""
        if self.refresher is not None:
            self.refresher.close()
        if self.near is not None:
            self.near.close()
        self.upstream.close()
        self.store.close()

    def corp(self, corpid: str) -> Corp:
        return self.registry.get(corpid)

    def channel_client(self, corp: Corp) -> ChannelClient:
        return self._client(self._channel_clients, ChannelClient, corp)

    def corp_client(self, corp: Corp) -> CorpClient:
        return self._client(self._corp_clients, CorpClient, corp)

    def app_client(self, corp: Corp) -> CurrentAppClient:
        """The client of a current-generation app (kinds service-window and internal): app token and ticket."""
        return self._client(self._app_clients, self._current_app_client, corp)

    def _current_app_client(self, corp: Corp, upstream: Upstream, credentials: Credentials) -> CurrentAppClient:
        return CurrentAppClient(corp, self.openapi, upstream, credentials)

    def _client(self, clients: dict[str, A], make: Callable[[Corp, Upstream, Credentials], A], corp: Corp) -> A:
        """The client of `corp`'s current registration, built on first use and again once the registration changes."""
        client = clients.get(corp.corpid)
        if client is None or client.corp is not corp:
            client = make(corp, self.upstream, self.credentials.for_registration(corp.registration))
            clients[corp.corpid] = client
        return client


def build_runtime(settings: Settings, store: redis.Redis) -> Runtime:
    """Build the runtime from the settings and the store (app.py composes; nothing here knows Flask)."""
    sealer = Sealer(settings.secret_key)
    near, near_off_reason = near_cache_for(settings, store)
    # Only over a real Redis, as the near cache: the in-process store serves one process, whose requests refresh.
    refresher = (
        Refresher(
            store,
            lead=settings.refresh_ahead_lead,
            every=settings.refresh_ahead_every,
            idle=settings.refresh_ahead_idle,
        )
        if settings.redis_url and settings.refresh_ahead
        else None
    )
    upstream = Upstream(
        settings.dingtalk_api_base,
        store,
        timeout=settings.http_timeout,
        busy_retries=settings.busy_retries,
        pacer=Pacer(
            store,
            rate=settings.upstream_rate,
            max_wait=settings.upstream_max_wait,
            max_queued=settings.upstream_max_queued,
            write_refused=WRITE_REFUSED,
        ),
    )
    return Runtime(
        settings=settings,
        store=store,
        sealer=sealer,
        upstream=upstream,
        openapi=OpenApi(settings.dingtalk_openapi_base, upstream),
        registry=CorpRegistry(store, sealer, cache_ttl=settings.corp_cache_ttl, near=near),
        credentials=Credentials(
            store,
            sealer,
            CacheSettings(
                margin=settings.token_margin,
                jitter=settings.token_jitter,
                lock_wait=settings.lock_wait,
                lock_ttl=settings.lock_ttl,
                fail_ttl=settings.config_error_ttl,
            ),
            near,
            watcher=refresher,
        ),
        keys=KeyRing(store, sealer, max_token_ttl=settings.session_ttl),
        clients=ClientRegistry(store),
        authorizations=Authorizations(store),
        near_off_reason=near_off_reason,
    )


def near_cache_for(settings: Settings, store: redis.Redis) -> tuple[NearCache | None, str]:
    """The near cache this store allows, or None and why not."""
    mode = mode_of(store)
    if mode == IN_PROCESS:
        # The in-process store is already local, and fakeredis has no CLIENT TRACKING.
        return None, "the store is in-process (REDIS_URL unset): nothing to keep closer"
    if not settings.near_cache:
        return None, "GATEWAY_NEAR_CACHE is off: every read goes to the store"
    if mode == CLUSTER:
        # Tracking is per node: one tracking connection to every primary (kit/nearcache.py ClusterNearCache).
        return ClusterNearCache(store, NAMESPACE + ":"), ""
    if mode == SENTINEL:
        return NearCache(store, NAMESPACE + ":", primary=store.connection_pool.get_master_address), ""
    return NearCache(store, NAMESPACE + ":"), ""
