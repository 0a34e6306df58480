"""Pacing of upstream calls per corp (or app) and API, shared by every worker and host through the store.

DingTalk allows about 20 calls per second per app and API (dingtalk-oapi.md §6) and answers the 21st with 90018
(v1.0: `Forbidden.AccessDenied.QpsLimitForAppkeyAndApi`). A burst of logins larger than that used to be sent as it
came, tripped the limit, and the backoff that followed refused everyone. Here each call first takes the next free
slot of its corp and API, at most `rate` per second, and sleeps until it; a burst queues and is served in order.

The schedule is a GCRA ("generic cell rate algorithm", the token bucket written as one timestamp): the store keeps
the theoretical arrival time (TAT) of the next free slot. One Lua script reads the clock, takes the slot
max(TAT, now) and moves the TAT one interval ((1 s + margin) / rate, below) on, atomically, so every worker on every
host draws from one schedule and slots are handed out in the order the requests reach Redis. The caller gets how
long to sleep. A slot further away than `max_wait` is not taken (the TAT does not move): the request is refused at
once with 503 and a Retry-After saying when a retry can first be queued, and costs the queue nothing.

Why not a library: `limits` (the well-kept Python rate limiter with Redis storage) answers "may this call go now?"
(`hit`/`test`, fixed or moving windows) and when its window resets; it never *reserves* a future slot. Waiting with
it means polling until `hit` succeeds, which serves a burst in no order, lets every waiter hammer Redis, and cannot
tell at the door whether the wait will fit `max_wait`. The reservation is the part no library does; it is eight
lines of Lua.

- The clock is Redis's own (TIME): hosts whose clocks differ still share one schedule.
- Spacing is strict (no burst allowance), and a little wider than 1/rate: a call leaves on its slot but reaches
  DingTalk after a delay that varies from call to call (thread scheduling, the connection pool, the network;
  measured here: mostly under 10 ms, at worst 80 ms on a loaded 2-core machine). With slots exactly 1/rate apart,
  the first of `rate + 1` calls arriving late and the last on time puts `rate + 1` into one second at DingTalk.
  So any `rate` consecutive slots span 1 s + DELIVERY_MARGIN: at most `rate` calls reach DingTalk in any second
  while that delay varies by less than the margin. A thread that wakes more than half the margin after its slot
  (its process stalled) takes a new slot rather than go out together with the calls after it (within its wait;
  past it, 503), so the calls leave at most `rate` in any second even on a starved machine. The rest of the
  headroom up to DingTalk's 20/s is for delivery delays beyond the margin and for anyone else using the app.
- A 90018 that gets through anyway (another system sharing the app's quota) opens the backoff window of
  oapi/backoff.py; the script reads it and starts the schedule after it, so calls queue past a short pause
  instead of being refused for the whole window.
- Key: `dtgw:v1:{CORPID}:pace:<api>` (v1.0: `<appKey>:<api>`), the corp's hash tag, beside its backoff keys.
- The sleepers are threads of the worker, so each process lets at most `max_queued` of them wait at once and
  refuses the rest at once (before taking a slot): page views always find a free thread.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import redis

from kit.keys import corp_key
from oapi.errors import QueueFull
from oapi.metrics import UPSTREAM_PACED

log = logging.getLogger(__name__)

DELIVERY_MARGIN = 0.1  # seconds: see the module docstring; 18/s leave 61 ms apart (16.4/s on average)

# KEYS[1]: the TAT (µs, Redis clock); KEYS[2]: the backoff window a rate-limit answer opened (oapi/backoff.py).
# ARGV[1]: the interval between slots (µs); ARGV[2]: the longest wait a caller accepts (µs).
# Returns {taken (1|0), wait in µs}: taken = sleep `wait` then call; not taken = the slot is `wait` away.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), now)
local hold = redis.call('PTTL', KEYS[2])
if hold > 0 then slot = math.max(slot, now + hold * 1000) end
local wait = slot - now
if wait > tonumber(ARGV[2]) then return {0, wait} end
local tat = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {1, wait}
"""


class Pacer:
    """Hands out upstream call slots per corp and API, at most `rate` per second (as DingTalk counts them), across
    every process sharing `store`.

    `rate` 0 turns pacing off (every call goes at once, as before).
    """

    def __init__(
        self,
        store: redis.Redis,
        *,
        rate: float,
        max_wait: float,
        max_queued: int,
        margin: float = DELIVERY_MARGIN,
        write_refused: tuple[type[Exception], ...] = (),
    ) -> None:
        self.rate = rate
        self.write_refused = write_refused
        self.margin = margin
        self.max_wait = max_wait
        self.max_queued = max_queued
        self._store = store
        self._reserve: Any = None
        self._waiting = 0
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.rate > 0

    def wait_turn(self, corpid: str, scope: str, *, api: str, backoff_key: str) -> float:
        """Sleep until this call's slot for `scope` (the API, or appKey:API for v1.0) of `corpid`; return the seconds
        slept. `backoff_key` is the scope's backoff window (oapi/backoff.py), which the schedule starts after.

        Raises QueueFull (503, Retry-After) when the slot is more than `max_wait` away, or when this process already
        has `max_queued` threads waiting; nothing is reserved then.
        """
        if not self.on:
            return 0.0
        with self._lock:
            if self._waiting >= self.max_queued:
                UPSTREAM_PACED.labels(api, "refused").inc()
                raise QueueFull(
                    f"Too many calls of {scope} are queued in this worker ({self.max_queued}); not queued",
                    retry_after=max(1, math.ceil(self.max_queued * (1 + self.margin) / self.rate)),
                )
            self._waiting += 1
        try:
            started = time.monotonic()
            while True:
                # However many turns it takes, the call waits no longer in all than max_wait.
                budget = self.max_wait - (time.monotonic() - started)
                wait = self.reserve(corpid, scope, api=api, backoff_key=backoff_key, max_wait=max(0.0, budget))
                due = time.monotonic() + wait
                if wait > 0:
                    time.sleep(wait)
                # A thread that wakes well after its slot (the process stalled: GC, a CPU-starved machine) would go
                # out together with the calls of the slots after it and put more than `rate` into one second at
                # DingTalk. It lets its slot go and takes a new one instead, until it is on time or out of wait.
                if time.monotonic() - due <= self.margin / 2:
                    return time.monotonic() - started
                UPSTREAM_PACED.labels(api, "woke_late").inc()
        finally:
            with self._lock:
                self._waiting -= 1

    def reserve(self, corpid: str, scope: str, *, api: str, backoff_key: str, max_wait: float | None = None) -> float:
        """Take the next slot and return how far away it is (seconds), or raise QueueFull without taking it when it
        is further than `max_wait` (default: the pacer's)."""
        max_wait = self.max_wait if max_wait is None else max_wait
        if self._reserve is None:
            self._reserve = self._store.register_script(_RESERVE)
        interval_us = round(1_000_000 * (1 + self.margin) / self.rate)
        try:
            taken, wait_us = self._reserve(
                keys=[corp_key(corpid, "pace", scope), backoff_key],
                args=[interval_us, round(max_wait * 1_000_000)],
            )
        except self.write_refused as e:
            # A full or read-only store cannot keep the schedule: the call goes unpaced rather than fail a login
            # that has all it needs (reliability.md, "Redis is up but refuses writes").
            log.warning("pacing corp=%s %s skipped: the store refuses writes (%s)", corpid, scope, type(e).__name__)
            return 0.0
        wait = int(wait_us) / 1_000_000
        if not int(taken):
            UPSTREAM_PACED.labels(api, "refused").inc()
            log.warning("pacing corp=%s %s: next slot in %.1fs, beyond the wait", corpid, scope, wait)
            raise QueueFull(
                f"DingTalk's per-second limit for {scope} leaves no slot within {self.max_wait:g} s "
                f"(the next is {wait:.1f} s away)",
                # The earliest a retry finds a slot within the wait: once the queue ahead of it has shrunk so far.
                retry_after=max(1, math.ceil(wait - self.max_wait)),
            )
        UPSTREAM_PACED.labels(api, "queued" if wait > 0 else "at_once").inc()
        return wait
