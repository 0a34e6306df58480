"""A budget of failed logins per client address and per corp, so a few addresses sending made-up codes cannot spend
a corp's DingTalk quota (issue 19).

Every login costs a call of the corp's code exchange, which DingTalk allows about 20 times a second for the whole
corp. 57 random codes from a few addresses once tripped that limit and locked the corp's real followers out. Here a
login whose code DingTalk does not know (`code_invalid`) counts against two budgets, in the store (every worker and
host):

- its client address, for that corp: GATEWAY_JUNK_ADDRESS_BUDGET (10) failures per GATEWAY_JUNK_WINDOW (600 s,
  from the first failure). Past it, every login from the address gets 429 `rate_limited` with Retry-After (the
  window's end) *without* calling DingTalk, whatever its code;
- the corp: GATEWAY_JUNK_CORP_BUDGET (100) failures per window, from all addresses. Past it, addresses that have
  failed before in the window are refused too, however little of their own budget they used, so many addresses
  with a few junk codes each cannot spend the quota either. Addresses that have never failed are never refused:
  a real follower's first attempt always goes through.

The check and the count are one Lua script each (as the support console's lockout, support/auth.py), because
concurrent attempts from one address must not all pass the check before any failure is counted: an address that
has failed before may have only as many attempts under way as its budget has left (pending attempts are held in
a sorted set that forgets a dead worker's after PENDING_TTL). An address that has never failed is not held to
that (behind one NAT a crowd of real followers signs in at once); its first burst is bounded by pacing instead
(oapi/pacing.py), and after it the address is over its budget.

Why not the `limits` library: it counts hits against a window and answers "allowed?", but cannot hold attempts
under way against the budget, nor decide on an address's and the corp's count in one atomic step.

The remote address is the request's (behind nginx, ProxyFix makes it the real client's). A success does not
reset the count: interleaving one real code would otherwise launder any number of made-up ones.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import redis

from channel.login import best_effort
from corp.runtime import Runtime
from gateway import trace
from gateway.errors import TooManyRequests
from gateway.store import WRITE_REFUSED
from kit.keys import corp_key
from oapi.errors import CodeInvalid

log = logging.getLogger(__name__)

PENDING_TTL_MS = 30_000  # longer than any login takes (gunicorn's timeout): then a dead worker's attempt is let go

# KEYS: the address's failures, the corp's failures, the address's attempts under way.
# ARGV: address budget, corp budget, pending TTL (ms), attempt id.
# Returns {0, 0} admitted unheld; {1, 0} admitted and held (settle it); {2, ms} refused for ms (address);
# {3, ms} refused (corp budget); {4, ms} refused while its remaining budget is out in attempts under way.
_ADMIT = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures == 0 then return {0, 0} end
if failures >= tonumber(ARGV[1]) then return {2, redis.call('PTTL', KEYS[1])} end
if tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then return {3, redis.call('PTTL', KEYS[2])} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if failures + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[1]) then return {4, 1000} end
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {1, 0}
"""
# KEYS as above. ARGV: attempt id ('' when unheld), failed (1/0), window (ms).
_SETTLE = """
if ARGV[1] ~= '' then redis.call('ZREM', KEYS[3], ARGV[1]) end
if ARGV[2] == '1' then
  if redis.call('INCR', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
  if redis.call('INCR', KEYS[2]) == 1 then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
end
"""
ADMITTED, HELD, OVER_ADDRESS, OVER_CORP, UNDER_WAY = 0, 1, 2, 3, 4


class TooManyFailedLogins(TooManyRequests):
    """Too many logins with unknown codes from one address (or from failing addresses, for one corp)."""

    default_hint = (
        "Too many sign-ins with invalid codes came from this address, so the gateway stops asking DingTalk for it "
        "for a while; wait the seconds in Retry-After. If this is a real person, open the page again inside DingTalk."
    )


class JunkBudget:
    """The failed-login budgets of one corp."""

    def __init__(self, store: redis.Redis, corpid: str, *, address_budget: int, corp_budget: int, window: int) -> None:
        self.corpid = corpid
        self.address_budget = address_budget
        self.corp_budget = corp_budget
        self.window = window
        self._store = store

    @property
    def on(self) -> bool:
        return self.address_budget > 0 and self.window > 0

    def keys(self, address: str) -> list[str]:
        return [
            corp_key(self.corpid, "junk", "address", address),
            corp_key(self.corpid, "junk", "failures"),
            corp_key(self.corpid, "junk", "pending", address),
        ]

    def admit(self, address: str) -> str:
        """Let a login from `address` go ahead (return its attempt id, '' when not held) or raise
        TooManyFailedLogins (429, Retry-After) without anything being asked of DingTalk."""
        if not self.on:
            return ""
        attempt = secrets.token_hex(8)
        corp_budget = self.corp_budget if self.corp_budget > 0 else 2**53
        try:
            verdict, ms = self._store.register_script(_ADMIT)(
                keys=self.keys(address), args=[self.address_budget, corp_budget, PENDING_TTL_MS, attempt]
            )
        except WRITE_REFUSED as e:
            # A full or read-only store cannot hold the attempt; the login itself needs no write (issue 15).
            log.warning("junk budget corp=%s not held: the store refuses writes (%s)", self.corpid, type(e).__name__)
            return ""
        verdict, ms = int(verdict), int(ms)
        if verdict == ADMITTED:
            return ""
        if verdict == HELD:
            return attempt
        retry_after = max(1, -(-ms // 1000))
        if verdict == OVER_CORP:
            message = f"Too many failed sign-ins for corp {self.corpid} from addresses that failed before"
        elif verdict == UNDER_WAY:
            message = "This address's remaining sign-in attempts are under way; not tried"
        else:
            message = f"Too many failed sign-ins from this address for corp {self.corpid}"
        log.warning("junk budget corp=%s address=%s refused (%s)", self.corpid, address, verdict)
        raise TooManyFailedLogins(message, retry_after=retry_after)

    def settle(self, address: str, attempt: str, *, failed: bool) -> None:
        """Count the attempt's outcome (a failure against both budgets) and let go of its hold."""
        if not self.on or (not failed and not attempt):
            return
        settle = self._store.register_script(_SETTLE)
        best_effort(
            "failed-login count",
            self.corpid,
            lambda: settle(keys=self.keys(address), args=[attempt, int(failed), self.window * 1000]),
        )


def budget_for(rt: Runtime, corpid: str) -> JunkBudget:
    settings = rt.settings
    return JunkBudget(
        rt.store,
        corpid,
        address_budget=settings.junk_address_budget,
        corp_budget=settings.junk_corp_budget,
        window=settings.junk_window,
    )


def sign_in(
    rt: Runtime, corpid: str, *, client: str, request_id: str, attempt: Callable[[str], dict[str, Any]]
) -> dict[str, Any]:
    """Run a login (`attempt(address)`: `channel.login.login` or `login_for_client`) within the failed-login
    budgets of the client's address and the corp (the one place they are applied; web/channel.py's login view
    calls it)."""
    rt.corp(corpid)  # an unknown corp is 404 before anything is written for it
    address = client or "unknown"
    budget = budget_for(rt, corpid)
    try:
        admitted = budget.admit(address)
    except TooManyFailedLogins:
        # Counted with the junk it most likely is, not listed one by one (gateway/trace.py).
        window = rt.settings.junk_window
        store = rt.store
        best_effort(
            "login trace",
            corpid,
            lambda: trace.record_junk(store, corpid, address, window=window, request_id=request_id, refused=True),
        )
        raise
    failed = False
    try:
        return attempt(address)
    except CodeInvalid:
        failed = True
        raise
    finally:
        budget.settle(address, admitted, failed=failed)
