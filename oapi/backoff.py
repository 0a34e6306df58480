"""Backoff every worker honours: per corp and API after a rate limit, and global after an egress-IP block.

DingTalk blocks the gateway's egress IP as a whole (dingtalk-oapi.md §6), so that block is global: while it lasts
no corp's call goes upstream, except one probe at a time (after `probe_after` seconds, then every `probe_every`
seconds; a SET NX in the store picks the one request, across every worker) to see whether it has lifted. An
answer in DingTalk's JSON shape lifts it for everyone; a non-JSON answer leaves its end where it was. A single
HTML page (a proxy's error page, a misdirected DINGTALK_API_BASE) therefore costs seconds, not five minutes.

With pacing on (oapi/pacing.py, the default), a rate-limit answer no longer refuses a corp's callers for a growing
window. The gateway's own calls stay below DingTalk's limit, so a 90018 means someone else spends the same quota
(another system with the app's key, a second deployment) or DingTalk counted a second differently. Its window is
one second, so a short pause empties it: the window opened here is capped at PACED_MAX_DELAY_MS, callers are not
refused by it but queue behind it (the pacing script starts the schedule after it), and the refused call queues
once more itself. Without pacing the window still grows to MAX_DELAY_MS and refuses (the old behaviour).
"""

from __future__ import annotations

import math
import time
from typing import Any

import redis

from kit.keys import corp_key, global_key
from oapi.errors import RateLimited
from oapi.hints import hint_for

MAX_DELAY_MS = 60_000
# Below the pacing's default wait (GATEWAY_UPSTREAM_MAX_WAIT, 5 s), so callers queued behind a pause are still
# served; 1, 2, 4 s: long enough to empty DingTalk's one-second window several times over.
PACED_MAX_DELAY_MS = 4_000
IP_BLOCK_MS = 300_000  # DingTalk blocks an egress IP for about five minutes
# One hash tag for the block and its probe: lifting the block deletes both in one command, one cluster slot.
IP_BLOCK = global_key("backoff", "{ip-block}")
IP_PROBE = global_key("backoff", "{ip-block}", "probe")  # held by the one request allowed upstream
PROBE_AFTER = 10.0
PROBE_EVERY = 10.0


class Backoff:
    """Shared backoff windows kept in the store, so one 90018 slows every worker, not just the one that saw it."""

    def __init__(
        self, store: redis.Redis, *, probe_after: float = PROBE_AFTER, probe_every: float = PROBE_EVERY
    ) -> None:
        self._store = store
        self.probe_after = probe_after
        self.probe_every = probe_every

    @staticmethod
    def window_key(corpid: str, api: str) -> str:
        """The key of the backoff window of corp and API (oapi/pacing.py's schedule starts after it)."""
        return corp_key(corpid, "backoff", api)

    def check(self, corpid: str, api: str, *, paced: bool = False) -> bool:
        """Raise RateLimited while a backoff window for this corp and API (or the global IP block) is open; a
        `paced` call is not refused by the corp's window (it queues behind it) but still by the global block.

        Returns True when the global block is on but this call is its probe: go upstream, then call
        `lift_ip_block()` if DingTalk answered in its JSON shape.
        """
        if not paced:
            pttl = self._store.pttl(self.window_key(corpid, api))
            if pttl and pttl > 0:
                raise RateLimited(f"Backing off {api} for corp {corpid}", retry_after=max(1, math.ceil(pttl / 1000)))
        pttl = self._store.pttl(IP_BLOCK)
        if not pttl or pttl <= 0:
            return False
        if self._store.set(IP_PROBE, api, nx=True, px=max(1, int(self.probe_every * 1000))):
            return True
        probe_in = self._store.pttl(IP_PROBE)
        raise self.ip_blocked(pttl, probe_in if probe_in and probe_in > 0 else None)

    def ip_blocked(self, pttl: int, probe_in: int | None = None, *, cause: str = "", **kw: Any) -> RateLimited:
        """The error for a call held back by the global block that ends in `pttl` ms (`probe_in`: next probe)."""
        ends = time.strftime("%H:%M:%S", time.gmtime(time.time() + pttl / 1000))
        wait = pttl if probe_in is None else min(pttl, probe_in)
        return RateLimited(
            f"{cause}DingTalk blocked the gateway's egress IP: calls of every corp are paused until {ends} UTC "
            f"({math.ceil(pttl / 1000)} s), with one probe every {self.probe_every:g} s to see whether it has "
            "lifted sooner. This is a global block, not a backoff of one corp.",
            retry_after=max(1, math.ceil(wait / 1000)),
            hint=f"{hint_for(1111)} This block ends at {ends} UTC at the latest.",
            **kw,
        )

    def trip(self, corpid: str, api: str, *, paced: bool = False) -> int:
        """Open (or lengthen, exponentially from 1 s) the backoff window for corp and API; return seconds.

        `paced`: the window is a pause the paced callers queue behind, capped at PACED_MAX_DELAY_MS.
        """
        level = int(self._store.incr(corp_key(corpid, "backoff-level", api)))
        # The level decays after a quiet five minutes, so a one-off limit costs one second again.
        self._store.expire(corp_key(corpid, "backoff-level", api), 300)
        delay_ms = min(PACED_MAX_DELAY_MS if paced else MAX_DELAY_MS, 1000 * 2 ** min(level - 1, 16))
        self._store.set(self.window_key(corpid, api), level, px=delay_ms)
        return math.ceil(delay_ms / 1000)

    def block_ip(self, wait_seconds: int | None) -> int:
        """Stop every call of every corp for the block's duration; return the seconds left.

        An explicit `wait` from DingTalk sets the end. A non-JSON answer while a block is on (a failed probe, or a
        call that was already in flight) leaves the end where it is, so probing never lengthens the block.
        """
        explicit = bool(wait_seconds)
        delay_ms = IP_BLOCK_MS if not explicit else max(1000, int(wait_seconds or 0) * 1000)
        if self._store.set(IP_BLOCK, 1, px=delay_ms, nx=not explicit):
            # A new block: the first probe waits probe_after.
            self._store.set(IP_PROBE, "-", px=max(1, int(self.probe_after * 1000)))
            return math.ceil(delay_ms / 1000)
        pttl = self._store.pttl(IP_BLOCK)
        return max(1, math.ceil(pttl / 1000)) if pttl and pttl > 0 else math.ceil(delay_ms / 1000)

    def lift_ip_block(self) -> bool:
        """End the global block (a probe got a JSON answer); True if this call lifted it."""
        return bool(self._store.delete(IP_BLOCK, IP_PROBE))

    def active(self, corpid: str) -> dict[str, int]:
        """Open windows for a corp (API -> seconds left), for the support console."""
        out: dict[str, int] = {}
        prefix = corp_key(corpid, "backoff", "")
        for key in self._store.scan_iter(match=prefix + "*", count=100):
            pttl = self._store.pttl(key)
            if pttl and pttl > 0:
                out[key[len(prefix) :]] = math.ceil(pttl / 1000)
        pttl = self._store.pttl(IP_BLOCK)
        if pttl and pttl > 0:
            out["*ip-block*"] = math.ceil(pttl / 1000)
        return out
