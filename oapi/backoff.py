"""Backoff every worker honours: per corp and API after a rate limit, and global after an egress-IP block."""

from __future__ import annotations

import math

import redis

from gateway.errors import RateLimited
from gateway.store import corp_key, global_key

MAX_DELAY_MS = 60_000
IP_BLOCK_MS = 300_000  # DingTalk blocks an egress IP for about five minutes


class Backoff:
    """Shared backoff windows kept in the store, so one 90018 slows every worker, not just the one that saw it."""

    def __init__(self, store: redis.Redis) -> None:
        self._store = store

    def check(self, corpid: str, api: str) -> None:
        """Raise RateLimited while a backoff window for this corp and API (or a global block) is open."""
        for key in (global_key("backoff", "ip-block"), corp_key(corpid, "backoff", api)):
            pttl = self._store.pttl(key)
            if pttl and pttl > 0:
                raise RateLimited(f"Backing off {api} for corp {corpid}", retry_after=max(1, math.ceil(pttl / 1000)))

    def trip(self, corpid: str, api: str) -> int:
        """Open (or lengthen, exponentially from 1 s) the backoff window for corp and API; return seconds."""
        level = int(self._store.incr(corp_key(corpid, "backoff-level", api)))
        # The level decays after a quiet five minutes, so a one-off limit costs one second again.
        self._store.expire(corp_key(corpid, "backoff-level", api), 300)
        delay_ms = min(MAX_DELAY_MS, 1000 * 2 ** min(level - 1, 16))
        self._store.set(corp_key(corpid, "backoff", api), level, px=delay_ms)
        return math.ceil(delay_ms / 1000)

    def block_ip(self, wait_seconds: int | None) -> int:
        """Stop every call of every corp for the block's duration."""
        delay_ms = IP_BLOCK_MS if not wait_seconds else max(1000, int(wait_seconds) * 1000)
        self._store.set(global_key("backoff", "ip-block"), 1, px=delay_ms)
        return math.ceil(delay_ms / 1000)

    def active(self, corpid: str) -> dict[str, int]:
        """Open windows for a corp (API -> seconds left), for the support console."""
        out: dict[str, int] = {}
        prefix = corp_key(corpid, "backoff", "")
        for key in self._store.scan_iter(match=prefix + "*", count=100):
            pttl = self._store.pttl(key)
            if pttl and pttl > 0:
                out[key[len(prefix) :]] = math.ceil(pttl / 1000)
        pttl = self._store.pttl(global_key("backoff", "ip-block"))
        if pttl and pttl > 0:
            out["*ip-block*"] = math.ceil(pttl / 1000)
        return out
