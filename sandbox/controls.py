"""Steer the simulator from tests: clock, tickets, tokens, whitelist, injected faults, latency, busy answers.

Also the rate limit and the call counts, which like the faults sit in front of the upstream's answers: `screen`
decides whether a call meets one of them before `sandbox.apis` answers it.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sandbox.model import Reply, SimulatorError, World, bad_param, check_api

# Longer than any sane client timeout; a typo must not hang a test run for hours.
MAX_LATENCY = 60.0
# A whole number of seconds, as DingTalk's expires_in is; up to DingTalk's own 7200.
MIN_LIFETIME, MAX_LIFETIME = 1.0, 7200.0
PIPELINES = ("channel", "corp")
TICKET_MODES = ("invalidate", "renew")
DEFAULT_BLOCKED_IP = "203.0.113.7"
MAX_ARRIVALS = 100_000  # arrival times kept for busiest_second (a long benchmark keeps the newest)
BUSY = (-1, "系统繁忙")  # dingtalk-oapi.md §6: "system busy", to be retried with a small backoff


@dataclass
class _Fault:
    reply: Reply
    remaining: int
    corpid: str | None


@dataclass(frozen=True)
class _Busy:
    fraction: float
    processed: bool  # True: the call is carried out, and only then answered -1 (the uncertain case)


class Controls:
    """The test controls of one simulated world; every method takes the world's lock or says it is held."""

    def __init__(self, world: World, rate_limit: int | None) -> None:
        if rate_limit is not None and rate_limit < 1:
            raise ValueError("rate_limit must be positive or None")
        self._world = world
        self._rate_limit = rate_limit
        self._faults: dict[str, deque[_Fault]] = {}
        self._latency: dict[str, float] = {}
        self._busy: dict[str, _Busy] = {}
        self._random = random.Random()
        self._calls: Counter[tuple[str, str | None]] = Counter()
        # When each call arrived (simulator clock), so tests can count calls per second as DingTalk would.
        self._arrivals: deque[tuple[float, str, str | None]] = deque(maxlen=MAX_ARRIVALS)
        self._windows: dict[tuple[str, str | None], deque[float]] = {}

    # ---- on the world's data ----------------------------------------------------------------------

    def set_ticket_mode(self, corpid: str, mode: str) -> None:
        """Choose whether a ticket fetch issues a new ticket ("invalidate") or renews the same ("renew")."""
        if mode not in TICKET_MODES:
            raise SimulatorError(40035, f"mode must be one of {TICKET_MODES}")
        with self._world.lock:
            self._world.corp(corpid).ticket_mode = mode

    def revoke_tokens(self, corpid: str, pipeline: str = "all") -> None:
        """Make the corp's currently issued tokens of pipeline ("channel", "corp", "all") answer 40014."""
        if pipeline not in (*PIPELINES, "all"):
            raise SimulatorError(40035, "pipeline must be channel, corp or all")
        with self._world.lock:
            self._world.corp(corpid)
            for token in self._world.tokens.values():
                if token.corpid == corpid and pipeline in (token.pipeline, "all"):
                    token.revoked = True

    def advance(self, seconds: float) -> None:
        """Move the simulator's clock forward."""
        _check_seconds(seconds)
        with self._world.lock:
            self._world.offset += seconds

    def set_lifetime(self, seconds: float | None) -> None:
        """Make every token and ticket issued from now on, of both generations, live `seconds` (None: DingTalk's 7200).

        For runs that watch many lifetimes go by in real time (refresh-ahead); everything else answers as before, and
        what was issued keeps its lifetime, as a renewal does.
        """
        if seconds is not None:
            _check_seconds(seconds)
            if not MIN_LIFETIME <= seconds <= MAX_LIFETIME:
                raise SimulatorError(40035, f"lifetime must be between {MIN_LIFETIME:g} and {MAX_LIFETIME:g} s")
        with self._world.lock:
            self._world.lifetime = float(seconds) if seconds is not None else None

    def set_ip_blocked(self, corpid: str, ip: str | None = DEFAULT_BLOCKED_IP) -> None:
        """Make the corp's token endpoints answer 60020 naming ip as off the whitelist; None clears."""
        with self._world.lock:
            self._world.corp(corpid).blocked_ip = ip

    # ---- in front of the upstream -----------------------------------------------------------------

    def inject(
        self,
        api: str,
        errcode: int,
        *,
        times: int = 1,
        errmsg: str = "injected",
        sub_code: int | None = None,
        raw: str | None = None,
        body: dict[str, Any] | None = None,
        corpid: str | None = None,
    ) -> None:
        """Make the next `times` calls of api (for corpid, or any corp) answer this error instead."""
        check_api(api)
        if times < 1:
            raise SimulatorError(40035, "times must be at least 1")
        if raw is not None and body is not None:
            raise SimulatorError(40035, "give raw or body, not both")
        reply: Reply
        if raw is not None:
            reply = raw
        elif body is not None:
            reply = dict(body)
        else:
            reply = {"errcode": errcode, "errmsg": errmsg}
            if sub_code is not None:
                reply["sub_code"] = sub_code
        with self._world.lock:
            self._faults.setdefault(api, deque()).append(_Fault(reply, times, corpid))

    def set_latency(self, seconds: float, api: str = "*") -> None:
        """Delay every answer of api by seconds; "*" sets the default for APIs without their own setting."""
        _check_seconds(seconds)
        if seconds > MAX_LATENCY:
            raise SimulatorError(40035, f"latency is capped at {MAX_LATENCY:g} s")
        if api != "*":
            check_api(api)
        with self._world.lock:
            self._latency[api] = seconds

    def set_busy(self, fraction: float, api: str = "*", *, processed: bool = False, seed: int | None = None) -> None:
        """Answer a random `fraction` of api's calls (0 turns it off) with -1, "system busy".

        By default a busy call is refused before anything happens (no code is spent, no ticket issued), which is
        what "busy" says. processed=True is the uncertain case: the call is carried out and its answer is lost to
        a -1, so a retried auth code then answers 40078. `seed` makes the sequence of busy answers repeatable.
        "*" sets the default for APIs without their own setting. Explicitly injected faults come first.
        """
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
            raise bad_param("fraction")
        if api != "*":
            check_api(api)
        with self._world.lock:
            self._busy[api] = _Busy(float(fraction), processed)
            if seed is not None:
                self._random.seed(seed)

    def calls(self, api: str | None = None, corpid: str | None = None) -> int:
        """Count upstream calls that reached the simulator (errors included), optionally filtered."""
        with self._world.lock:
            return sum(
                n
                for (call_api, call_corp), n in self._calls.items()
                if api in (None, call_api) and corpid in (None, call_corp)
            )

    def reset_calls(self) -> None:
        """Forget the call counts (and arrival times)."""
        with self._world.lock:
            self._calls.clear()
            self._arrivals.clear()

    def arrivals(self, api: str | None = None, corpid: str | None = None) -> list[float]:
        """When each call (errors included) reached the simulator, oldest first, optionally filtered."""
        with self._world.lock:
            return [t for t, a, c in self._arrivals if api in (None, a) and corpid in (None, c)]

    def wait(self, api: str) -> None:
        """Sleep for api's latency; called without the lock, so a slow answer does not hold up other callers."""
        with self._world.lock:
            delay = self._latency.get(api, self._latency.get("*", 0.0))
        if delay:
            time.sleep(delay)

    def screen(self, api: str, corpid: str | None, carry_out: Callable[[], Reply]) -> Reply | None:
        """Count the call and return the answer a control imposes on it, or None; called with the lock held.

        An injected fault comes first, then a busy answer (after `carry_out` if busy calls are processed), then
        the rate limit.
        """
        self._calls[(api, corpid)] += 1
        self._arrivals.append((self._world.now(), api, corpid))
        fault = self._take_fault(api, corpid)
        if fault is not None:
            return fault
        busy = self._busy.get(api, self._busy.get("*"))
        if busy is not None and busy.fraction and self._random.random() < busy.fraction:
            if busy.processed:
                carry_out()  # its answer is lost to the -1
            return {"errcode": BUSY[0], "errmsg": BUSY[1]}
        if self._throttled(api, corpid):
            return {"errcode": 90018, "errmsg": "当前请求被限流,请稍后重试"}
        return None

    def _take_fault(self, api: str, corpid: str | None) -> Reply | None:
        """Consume and return the first injected fault that applies to this call."""
        queue = self._faults.get(api)
        if not queue:
            return None
        for fault in queue:
            if fault.corpid in (None, corpid):
                fault.remaining -= 1
                if fault.remaining == 0:
                    queue.remove(fault)
                return dict(fault.reply) if isinstance(fault.reply, dict) else fault.reply
        return None

    def _throttled(self, api: str, corpid: str | None) -> bool:
        """Record the call in its 1 s sliding window and tell whether it exceeds the rate limit."""
        if self._rate_limit is None:
            return False
        now = self._world.now()
        window = self._windows.setdefault((api, corpid), deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        # Rejected calls count too: a client that keeps hammering stays throttled.
        window.append(now)
        return len(window) > self._rate_limit


def busiest_second(arrivals: list[float], window: float = 1.0) -> int:
    """The most calls in any `window` seconds, counted as the rate limit counts them: the calls in (t - window, t]
    for every arrival t."""
    times = sorted(arrivals)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def _check_seconds(seconds: float) -> None:
    """Raise 40035 unless seconds is a finite, non-negative number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise bad_param("seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise bad_param("seconds")
