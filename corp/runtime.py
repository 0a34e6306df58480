"""What every request needs, built once per app: store, sealer, upstream client, corp registry, settings."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis

from corp.registry import Corp, CorpRegistry
from kit.keys import NAMESPACE
from kit.nearcache import NearCache
from kit.sealing import Sealer, session_jwt_key
from oapi.channel import ChannelClient
from oapi.client import AppClient
from oapi.corp import CorpClient
from oapi.credentials import CacheSettings
from oapi.tokens import Credentials
from oapi.upstream import Upstream

A = TypeVar("A", bound=AppClient[Any])


@dataclass
class Runtime:
    """The app's shared clients. Per-corp clients are cheap to build and hold no per-user state."""

    config: dict[str, Any]
    store: redis.Redis
    sealer: Sealer
    upstream: Upstream
    registry: CorpRegistry
    credentials: Credentials
    session_key: bytes
    # One client per corp registration, shared by every thread: clients hold no per-user state (house style 4).
    # A re-read registration (a new Corp object, once the registry hears of a change) gets new ones, whose
    # credential caches read and write only what belongs to that registration.
    _channel_clients: dict[str, ChannelClient] = field(default_factory=dict, repr=False)
    _corp_clients: dict[str, CorpClient] = field(default_factory=dict, repr=False)

    @property
    def near(self) -> NearCache | None:
        return self.credentials.near

    def close(self) -> None:
        """Release pooled connections to DingTalk and the store."""
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

    def _client(self, clients: dict[str, A], make: Callable[[Corp, Upstream, Credentials], A], corp: Corp) -> A:
        """The client of `corp`'s current registration, built on first use and again once the registration changes."""
        client = clients.get(corp.corpid)
        if client is None or client.corp is not corp:
            client = make(corp, self.upstream, self.credentials.for_registration(corp.registration))
            clients[corp.corpid] = client
        return client


def build_runtime(config: Mapping[str, Any], store: redis.Redis) -> Runtime:
    """Build the runtime from the settings and the store (app.py composes; nothing here knows Flask)."""
    sealer = Sealer(config["GATEWAY_SECRET_KEY"])
    # Only over a real Redis: the in-process store is already local, and fakeredis has no CLIENT TRACKING.
    near = NearCache(store, NAMESPACE + ":") if config.get("REDIS_URL") and config["GATEWAY_NEAR_CACHE"] else None
    return Runtime(
        config=dict(config),
        store=store,
        sealer=sealer,
        upstream=Upstream(
            config["DINGTALK_API_BASE"],
            store,
            timeout=float(config["GATEWAY_HTTP_TIMEOUT"]),
            busy_retries=int(config["GATEWAY_BUSY_RETRIES"]),
        ),
        registry=CorpRegistry(store, sealer, cache_ttl=float(config["GATEWAY_CORP_CACHE_TTL"]), near=near),
        credentials=Credentials(
            store,
            sealer,
            CacheSettings(
                margin=int(config["GATEWAY_TOKEN_MARGIN"]),
                jitter=int(config["GATEWAY_TOKEN_JITTER"]),
                lock_wait=float(config["GATEWAY_LOCK_WAIT"]),
                lock_ttl=float(config["GATEWAY_LOCK_TTL"]),
                fail_ttl=int(config["GATEWAY_CONFIG_ERROR_TTL"]),
            ),
            near,
        ),
        session_key=session_jwt_key(config["GATEWAY_SECRET_KEY"]),
    )
