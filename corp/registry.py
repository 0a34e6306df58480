"""The corp registry in the store: one hash per corp, secrets sealed, plus an index of corpids."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from urllib.parse import urlsplit

import redis

from gateway.errors import SecretsUnreadable, UnknownCorp
from gateway.sealing import Sealer, SealError
from gateway.store import corp_key, global_key

SECRET_FIELDS = ("corp_secret", "channel_secret", "callback_token", "aes_key")
INDEX = global_key("corps")


@dataclass(frozen=True)
class Corp:
    """A registered corp. Secrets are only ever held opened in memory; repr() never shows them."""

    corpid: str
    agent_id: str
    origins: tuple[str, ...]
    sign_hash: str = "sha1"
    landing_url: str | None = None
    callback_key: str | None = None
    corp_secret: str = field(default="", repr=False)
    channel_secret: str = field(default="", repr=False)
    callback_token: str | None = field(default=None, repr=False)
    aes_key: str | None = field(default=None, repr=False)

    @property
    def receiver_key(self) -> str:
        """The key DingTalk appends to callback plaintext: the corpid unless registered otherwise."""
        return self.callback_key or self.corpid

    def allows(self, url: str) -> bool:
        """True when `url`'s scheme, host and port equal one registered origin's."""
        return origin_of(url) in self._origin_set

    def allows_origin(self, origin: Origin | None) -> bool:
        """`allows()` for an origin already worked out with `origin_of()`."""
        return origin in self._origin_set

    @cached_property
    def _origin_set(self) -> frozenset[Origin | None]:
        return frozenset(origin_of(o) for o in self.origins)

    def public(self) -> dict[str, object]:
        """What may be shown to anyone: no secrets."""
        return {
            "corpid": self.corpid,
            "agent_id": self.agent_id,
            "origins": list(self.origins),
            "sign_hash": self.sign_hash,
            "landing_url": self.landing_url,
            "callback": bool(self.callback_token and self.aes_key),
            "callback_key": self.receiver_key,
        }


_DEFAULT_PORTS = {"http": 80, "https": 443}


Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an absolute http(s) URL, lower-cased and with the default port filled in."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


class CorpRegistry:
    """Reads and writes corps in the store.

    Every request needs its corp, so a registration read from the store is kept in this process for
    `cache_ttl` seconds: a change made elsewhere (another host's `flask corp add/remove`) takes effect within that.
    """

    def __init__(self, store: redis.Redis, sealer: Sealer, *, cache_ttl: float = 2.0) -> None:
        self._store = store
        self._sealer = sealer
        self._cache_ttl = cache_ttl
        self._cache: dict[str, tuple[float, Corp]] = {}

    @staticmethod
    def key(corpid: str) -> str:
        return corp_key(corpid, "corp")

    def add(self, corp: Corp) -> None:
        """Register or replace a corp."""
        key = self.key(corp.corpid)
        mapping: dict[str, str] = {
            "corpid": corp.corpid,
            "agent_id": corp.agent_id,
            "origins": json.dumps(list(corp.origins)),
            "sign_hash": corp.sign_hash,
            "landing_url": corp.landing_url or "",
            "callback_key": corp.callback_key or "",
        }
        for name in SECRET_FIELDS:
            value = getattr(corp, name)
            mapping[name] = self._sealer.seal(value, f"{key}:{name}") if value else ""
        pipe = self._store.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=mapping)
        pipe.execute()
        self._store.sadd(INDEX, corp.corpid)
        self._cache.pop(corp.corpid, None)

    def get(self, corpid: str) -> Corp:
        """The corp, secrets opened; UnknownCorp if not registered."""
        cached = self._cache.get(corpid)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        corp = self._load(corpid)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[corpid] = (now + self._cache_ttl, corp)
        return corp

    def _load(self, corpid: str) -> Corp:
        key = self.key(corpid)
        raw = self._store.hgetall(key)
        if not raw:
            raise UnknownCorp(f"Corp {corpid!r} is not registered with this gateway")
        try:
            opened = {
                name: (self._sealer.open(raw[name], f"{key}:{name}") if raw.get(name) else None)
                for name in SECRET_FIELDS
            }
        except SealError as e:
            raise SecretsUnreadable(f"The secrets of corp {corpid!r} do not open with this GATEWAY_SECRET_KEY") from e
        return Corp(
            corpid=raw["corpid"],
            agent_id=raw["agent_id"],
            origins=tuple(json.loads(raw.get("origins") or "[]")),
            sign_hash=raw.get("sign_hash") or "sha1",
            landing_url=raw.get("landing_url") or None,
            callback_key=raw.get("callback_key") or None,
            corp_secret=opened["corp_secret"] or "",
            channel_secret=opened["channel_secret"] or "",
            callback_token=opened["callback_token"],
            aes_key=opened["aes_key"],
        )

    def exists(self, corpid: str) -> bool:
        return bool(self._store.exists(self.key(corpid)))

    def corpids(self) -> list[str]:
        """Registered corpids, sorted."""
        return sorted(c for c in self._store.smembers(INDEX) if self._store.exists(self.key(c)))

    def remove(self, corpid: str) -> bool:
        """Forget a corp and everything cached for it; False if it was not registered."""
        self._cache.pop(corpid, None)
        existed = bool(self._store.exists(self.key(corpid)))
        keys = list(self._store.scan_iter(match=corp_key(_glob_escape(corpid), "*"), count=500))
        if keys:
            self._store.delete(*keys)
        self._store.srem(INDEX, corpid)
        return existed


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
