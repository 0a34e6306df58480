"""The corp registry in the store: one hash per corp, secrets sealed, plus an index of corpids.

Each `add` is a new registration with its own id (gateway/store.py REGISTRATION_FIELD). Replacing or removing a
registration drops what was cached for the corp (tokens, tickets, user links, backoff and cooldowns), and a
refresh still in flight for the old registration stores nothing (oapi/tokens.py checks the id in every write).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from functools import cached_property

import redis

from gateway.errors import SecretsUnreadable, UnknownCorp
from gateway.validation import Origin, UrlRefused, parse_web_url
from kit.keys import REGISTRATION_FIELD, corp_key, global_key, registration_key
from kit.nearcache import NearCache
from kit.sealing import Sealer, SealError
from oapi.signing import DEFAULT_HASH

SECRET_FIELDS = ("corp_secret", "channel_secret", "app_secret", "callback_token", "aes_key")

# The three kinds of login app (gateway-contract.md, dingtalk-oapi.md §3 and §7).
CHANNEL, SERVICE_WINDOW, INTERNAL = "channel", "service-window", "internal"
KINDS = (CHANNEL, SERVICE_WINDOW, INTERNAL)
# How a service-window follower is mapped to the real org (`--map-by`, dingtalk-oapi.md §7.4: which unionid the
# real org recognises is not settled, so it is a setting per registration).
MAP_BY = ("unionid", "associated_unionid")
CURRENT_HASH = "sha256"  # the default hash of the current-generation kinds (§7.2: current samples use SHA-256)


def default_hash(kind: str) -> str:
    """The dd.config hash a registration of `kind` signs with unless it says otherwise."""
    return DEFAULT_HASH if kind == CHANNEL else CURRENT_HASH


INDEX = global_key("corps")

# What `add` says it did.
REGISTERED, REPLACED, UNCHANGED = "registered", "replaced", "unchanged"
# A corp's keys that are history, not cache, and stay when its registration is replaced (`remove` drops them too):
# the support trace, received events and the callback replay guards (by the first part after the corpid).
_KEPT_ON_REPLACE = frozenset({"trace", "events", "event-seen", "callback-seen"})


@dataclass(frozen=True)
class Corp:
    """A registered login app (one per corpid) of one of the KINDS. Secrets are only ever held opened in memory;
    repr() never shows them.

    Kind `channel` uses corp_secret + channel_secret; kinds `service-window` and `internal` use app_key +
    app_secret (and a service window may name the registered `internal` app of its real org in `map_via`).
    """

    corpid: str
    agent_id: str
    origins: tuple[str, ...]
    sign_hash: str = DEFAULT_HASH
    landing_url: str | None = None
    callback_key: str | None = None
    kind: str = CHANNEL
    app_key: str = ""
    map_via: str | None = None
    map_by: str = "unionid"
    require_follow: bool = False
    corp_secret: str = field(default="", repr=False)
    channel_secret: str = field(default="", repr=False)
    app_secret: str = field(default="", repr=False)
    callback_token: str | None = field(default=None, repr=False)
    aes_key: str | None = field(default=None, repr=False)
    # Set by the registry: which registration this is, and when it was made (unix seconds).
    registration: str = field(default="", compare=False)
    registered_at: float = field(default=0.0, compare=False)

    @property
    def current(self) -> bool:
        """True for the current-generation kinds (app token, app ticket, dd.requestAuthCode with clientId)."""
        return self.kind != CHANNEL

    @property
    def receiver_key(self) -> str:
        """The key DingTalk appends to callback plaintext: the corpid unless registered otherwise."""
        return self.callback_key or self.corpid

    def allows_origin(self, origin: Origin | None) -> bool:
        """True when `origin` (scheme, host and port, as gateway.validation reads a URL's) is a registered one."""
        return origin in self._origin_set

    @cached_property
    def _origin_set(self) -> frozenset[Origin | None]:
        return frozenset(origin_of(o) for o in self.origins)

    def public(self) -> dict[str, object]:
        """What may be shown to anyone: no secrets."""
        return {
            "corpid": self.corpid,
            "kind": self.kind,
            "agent_id": self.agent_id,
            # The appKey is the page's clientId: public by design (dd.requestAuthCode sends it from the browser).
            "app_key": self.app_key or None,
            "map_via": self.map_via,
            "map_by": self.map_by if self.map_via else None,
            "require_follow": self.require_follow,
            "origins": list(self.origins),
            "sign_hash": self.sign_hash,
            "landing_url": self.landing_url,
            "callback": bool(self.callback_token and self.aes_key),
            "callback_key": self.receiver_key,
        }


def origin_of(url: str) -> Origin | None:
    """(scheme, host, port) of an absolute http(s) URL as a browser reads it (gateway/validation.py's rule, the one
    pages are signed by), or None where that rule refuses the URL."""
    try:
        return parse_web_url(url).origin
    except UrlRefused:
        return None


class CorpRegistry:
    """Reads and writes corps in the store.

    Every request needs its corp, so a registration read from the store is kept in this process. With a near
    cache (a real Redis) it is kept until Redis announces a change to it, which reaches every worker within
    milliseconds, and at most `cache_ttl` seconds; without one (or while its channel is down), for `cache_ttl`
    seconds, so a change made elsewhere (another host's `flask corp add/remove`) takes effect within that.
    """

    def __init__(
        self, store: redis.Redis, sealer: Sealer, *, cache_ttl: float = 2.0, near: NearCache | None = None
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._cache_ttl = cache_ttl
        self._near = near
        self._cache: dict[str, tuple[float, Corp]] = {}
        self._keys: dict[str, str] = {}  # corpid -> key, so the hot path builds no string

    @staticmethod
    def key(corpid: str) -> str:
        return registration_key(corpid)

    def add(self, corp: Corp, *, renew: bool = False) -> str:
        """Register `corp` under a new registration: REGISTERED, or REPLACED when it replaced one.

        Replacing drops everything cached for the corp. An identical registration (same settings and secrets) is
        kept as it is, caches included (UNCHANGED), unless `renew` (`flask corp add` always renews).
        """
        key = self.key(corp.corpid)
        if not renew and self._is_registered_as(corp):
            return UNCHANGED
        mapping: dict[str, str] = {
            "corpid": corp.corpid,
            "agent_id": corp.agent_id,
            "origins": json.dumps(list(corp.origins)),
            "sign_hash": corp.sign_hash,
            "landing_url": corp.landing_url or "",
            "callback_key": corp.callback_key or "",
            "kind": corp.kind,
            "app_key": corp.app_key,
            "map_via": corp.map_via or "",
            "map_by": corp.map_by,
            "require_follow": "1" if corp.require_follow else "",
        }
        for name in SECRET_FIELDS:
            value = getattr(corp, name)
            mapping[name] = self._sealer.seal(value, f"{key}:{name}") if value else ""
        mapping[REGISTRATION_FIELD] = secrets.token_hex(8)
        mapping["registered_at"] = f"{time.time():.3f}"
        # One transaction (one cluster slot: the corp's hash tag) switches the registration and drops what was
        # cached for the corp. From then on only the new registration writes credentials (oapi/tokens.py), so
        # nothing it caches can be swept by mistake; what the old one wrote between the scan and the switch is
        # sealed for it, unusable by the new one, and expires.
        stale = self._cached_keys(corp.corpid, replacing=True)
        pipe = self._store.pipeline(transaction=True)
        pipe.exists(key)
        pipe.delete(key, *stale)
        pipe.hset(key, mapping=mapping)
        existed = bool(pipe.execute()[0])
        self._store.sadd(INDEX, corp.corpid)  # another slot on a cluster: beside the transaction, not in it
        self._forget(corp.corpid)
        return REPLACED if existed else REGISTERED

    def _is_registered_as(self, corp: Corp) -> bool:
        try:
            return self._load(corp.corpid) == corp
        except (UnknownCorp, SecretsUnreadable):
            return False

    def _forget(self, corpid: str) -> None:
        # Read-your-writes in this process; other processes hear of it from Redis (near cache) or within cache_ttl.
        self._cache.pop(corpid, None)
        if self._near is not None:
            self._near.drop(self.key(corpid))

    def get(self, corpid: str) -> Corp:
        """The corp, secrets opened; UnknownCorp if not registered."""
        near = self._near
        if near is not None:
            key = self._keys.get(corpid)
            if key is None:
                if len(self._keys) > 10_000:
                    self._keys.clear()
                key = self._keys[corpid] = self.key(corpid)
            kept = near.get(key)
            if kept is not None:
                return kept  # type: ignore[no-any-return]
            snapshot = near.snapshot()
            if snapshot is not None:
                read_at = time.monotonic()
                corp = self._load(corpid)
                near.put(key, corp, ttl_ms=int(self._cache_ttl * 1000), snapshot=snapshot, read_at=read_at)
                return corp
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
        kind = raw.get("kind") or CHANNEL  # registrations made before kinds existed are legacy windows
        return Corp(
            corpid=raw["corpid"],
            agent_id=raw["agent_id"],
            origins=tuple(json.loads(raw.get("origins") or "[]")),
            sign_hash=raw.get("sign_hash") or default_hash(kind),
            landing_url=raw.get("landing_url") or None,
            callback_key=raw.get("callback_key") or None,
            kind=kind,
            app_key=raw.get("app_key") or "",
            map_via=raw.get("map_via") or None,
            map_by=raw.get("map_by") or "unionid",
            require_follow=raw.get("require_follow") == "1",
            corp_secret=opened["corp_secret"] or "",
            channel_secret=opened["channel_secret"] or "",
            app_secret=opened["app_secret"] or "",
            callback_token=opened["callback_token"],
            aes_key=opened["aes_key"],
            registration=raw.get(REGISTRATION_FIELD, ""),
            registered_at=float(raw.get("registered_at") or 0),
        )

    def exists(self, corpid: str) -> bool:
        return bool(self._store.exists(self.key(corpid)))

    def corpids(self) -> list[str]:
        """Registered corpids, sorted."""
        return sorted(c for c in self._store.smembers(INDEX) if self._store.exists(self.key(c)))

    def remove(self, corpid: str) -> bool:
        """Forget a corp and everything kept for it; False if it was not registered.

        The registration goes first, so a refresh in flight for it stores nothing (oapi/tokens.py); then every
        key of the corp.
        """
        existed = bool(self._store.delete(self.key(corpid)))
        self._store.srem(INDEX, corpid)
        self._forget(corpid)
        keys = self._cached_keys(corpid, replacing=False)
        for start in range(0, len(keys), 500):
            self._store.delete(*keys[start : start + 500])
        return existed

    def _cached_keys(self, corpid: str, *, replacing: bool) -> list[str]:
        """The corp's keys but its registration; when `replacing`, only cache: no history, and no locks (they free
        themselves, and deleting one under its holder would let a second refresh run beside the first)."""
        prefix, record = corp_key(corpid, ""), self.key(corpid)

        def dropped(key: str) -> bool:
            if key == record:
                return False
            if not replacing:
                return True
            return not key.endswith(":lock") and key[len(prefix) :].split(":", 1)[0] not in _KEPT_ON_REPLACE

        return [k for k in self._store.scan_iter(match=corp_key(_glob_escape(corpid), "*"), count=500) if dropped(k)]


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
