"""Who may use the support console: the admin token (bearer) or a signed, expiring, revocable session cookie.

- The admin token is compared in constant time and never stored or echoed; the cookie holds a random session
  id, a CSRF token and a keyed tag of the admin token (rotating the token ends every session), signed with a
  key derived from GATEWAY_SECRET_KEY.
- Logout deletes the session's key in the store, so a copied cookie stops working too.
- Wrong tokens are counted per client IP in the store (`dtgw:v1:support:fail:<ip>`, sliding window); past the
  limit every attempt from that IP, right or wrong, gets 429 rate_limited (`TooManyRequests`, the contract's
  envelope) with Retry-After until the window passes; the HTML login form shows it as a message, also 429.
  The limit is on tokens *checked*, however many arrive at once: an attempt first reserves a check in the store
  (one Lua script: refused when the failures plus the checks under way reach the limit), and only then is the
  token compared. Checking first and counting after let 200 concurrent guesses have 8 checked against a limit
  of 5. Tokens arriving together beyond what the limit leaves room for wait for a free check (at most
  CHECK_WAIT seconds, then 429 with Retry-After: 1), so right tokens sent at once are never locked out.
- A cookie-authenticated POST must carry the session's CSRF token (`X-CSRF-Token` header or `csrf` form field).
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import time
from dataclasses import dataclass

import redis
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.config import DEFAULTS
from gateway.config import Settings as AppSettings
from gateway.errors import TooManyRequests, Unauthorized
from kit.keys import global_key
from kit.sealing import derive_key

COOKIE = "dtgw_support"
COOKIE_PATH = "/support"
CSRF_HEADER = "X-CSRF-Token"
DISABLED_HINT = "console disabled: set GATEWAY_ADMIN_TOKEN"

CHECK_WAIT = 2.0  # seconds an attempt waits for a free check while the limit's worth are under way


class TooManyAttempts(TooManyRequests):
    """Too many wrong admin tokens from one address (429 rate_limited, not 401: the token may even be right)."""

    default_hint = "Too many wrong admin tokens from this address; wait the seconds in Retry-After."


@dataclass(frozen=True)
class Session:
    """A verified console session."""

    sid: str
    csrf: str


@dataclass(frozen=True)
class Settings:
    """The console's knobs, read once from the app config (gateway/config.py has their defaults and types)."""

    admin_token: str | None
    secret_key: str
    session_ttl: int = DEFAULTS["GATEWAY_SUPPORT_SESSION_TTL"]
    max_failures: int = DEFAULTS["GATEWAY_SUPPORT_MAX_FAILURES"]
    fail_window: int = DEFAULTS["GATEWAY_SUPPORT_FAIL_WINDOW"]
    selftest_cooldown: int = DEFAULTS["GATEWAY_SUPPORT_SELFTEST_COOLDOWN"]

    @classmethod
    def from_settings(cls, settings: AppSettings) -> Settings:
        """The console's share of the app's settings."""
        return cls(
            admin_token=settings.admin_token or None,
            secret_key=settings.secret_key,
            session_ttl=settings.support_session_ttl,
            max_failures=settings.support_max_failures,
            fail_window=settings.support_fail_window,
            selftest_cooldown=settings.support_selftest_cooldown,
        )

    @property
    def enabled(self) -> bool:
        return bool(self.admin_token)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def token_matches(settings: Settings, given: str) -> bool:
    """Constant-time comparison (of digests, so not even the length leaks)."""
    if not settings.admin_token:
        return False
    return hmac.compare_digest(_digest(given), _digest(settings.admin_token))


def fail_key(ip: str) -> str:
    """A hash per client address: `failures` (wrong tokens in the window) and `checking` (checks under way)."""
    return global_key("support", "fail", ip or "unknown")


# KEYS[1] fail_key; ARGV limit, window. Returns {verdict, ttl}: 0 go ahead (a check is reserved), 1 locked out,
# 2 as many checks are under way as the limit leaves room for (retry in a moment).
_RESERVE = """
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if failures >= tonumber(ARGV[1]) then return {1, redis.call('TTL', KEYS[1])} end
local checking = tonumber(redis.call('HGET', KEYS[1], 'checking') or '0')
if failures + checking >= tonumber(ARGV[1]) then return {2, 1} end
redis.call('HINCRBY', KEYS[1], 'checking', 1)
-- A worker that dies between reserving and settling holds its reservation until the window passes, never longer.
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return {0, 0}
"""
# KEYS[1] fail_key; ARGV right (1/0), window. Returns the failures counted in the window (0 after a right token).
_SETTLE = """
if tonumber(redis.call('HGET', KEYS[1], 'checking') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'checking', -1)
end
if ARGV[1] == '1' then
  redis.call('HDEL', KEYS[1], 'failures')
  if tonumber(redis.call('HGET', KEYS[1], 'checking') or '0') <= 0 then redis.call('DEL', KEYS[1]) end
  return 0
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('EXPIRE', KEYS[1], ARGV[2])
return failures
"""


def _session_key(sid: str) -> str:
    # The store holds a hash of the id: a dump of Redis does not yield a usable cookie (which is signed anyway).
    return global_key("support", "session", hashlib.sha256(sid.encode()).hexdigest()[:32])


class Guard:
    """Checks credentials for one app: admin token, failure counter, session cookies."""

    def __init__(self, store: redis.Redis, settings: Settings) -> None:
        self._store = store
        self.settings = settings
        self._reserve = store.register_script(_RESERVE)
        self._settle = store.register_script(_SETTLE)
        key = derive_key(settings.secret_key, "support-session-v1")
        self._serializer = URLSafeTimedSerializer(key, salt="dtgw-support-session")
        self._binding = (
            hmac.new(key, (settings.admin_token or "").encode(), hashlib.sha256).hexdigest()[:16]
            if settings.admin_token
            else ""
        )

    # -- the admin token -----------------------------------------------------------------------------------
    def require_enabled(self) -> None:
        if not self.settings.enabled:
            raise Unauthorized("The support console is disabled", hint=DISABLED_HINT)

    def check_token(self, given: str, ip: str) -> None:
        """Accept the admin token, or count a failure; raise Unauthorized / TooManyAttempts.

        No more than `max_failures` tokens from one address are compared between two right ones in a window,
        however many arrive at once: each check is reserved in the store before the comparison, settled after.
        """
        self.require_enabled()
        key, window = fail_key(ip), self.settings.fail_window
        deadline = time.monotonic() + CHECK_WAIT
        while True:
            verdict, ttl = (int(v) for v in self._reserve(keys=[key], args=[self.settings.max_failures, window]))
            if verdict != 2 or time.monotonic() >= deadline:
                break
            # Checks under way settle within milliseconds; they free their reservation, or count a failure.
            time.sleep(0.005 + random.random() * 0.01)
        if verdict == 1:
            raise self._locked_out(ttl)
        if verdict == 2:
            raise TooManyAttempts(
                "Too many admin token checks at once from this address",
                hint="Retry in a second; send fewer requests at once.",
                retry_after=1,
            )
        right = token_matches(self.settings, given)
        failures = int(self._settle(keys=[key], args=[1 if right else 0, window]))
        if right:
            return
        if failures >= self.settings.max_failures:
            raise TooManyAttempts("Wrong admin token; too many wrong tokens from this address", retry_after=window)
        raise Unauthorized("Wrong admin token", hint="Check GATEWAY_ADMIN_TOKEN; repeated wrong tokens are locked out.")

    def _locked_out(self, ttl: int) -> TooManyAttempts:
        return TooManyAttempts(
            "Too many wrong admin tokens from this address",
            retry_after=max(1, ttl if ttl > 0 else self.settings.fail_window),
        )

    # -- sessions ------------------------------------------------------------------------------------------
    def open_session(self) -> tuple[str, Session]:
        """Start a session; return the cookie value and the session."""
        session = Session(sid=secrets.token_urlsafe(24), csrf=secrets.token_urlsafe(24))
        self._store.set(_session_key(session.sid), "1", ex=self.settings.session_ttl)
        cookie = self._serializer.dumps({"sid": session.sid, "csrf": session.csrf, "a": self._binding})
        return cookie, session

    def session_from_cookie(self, cookie: str | None) -> Session | None:
        """The session a cookie proves, or None (missing, tampered, expired, logged out, or token rotated)."""
        if not cookie or not self.settings.enabled:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=self.settings.session_ttl)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        sid, csrf, binding = data.get("sid"), data.get("csrf"), data.get("a")
        if not isinstance(sid, str) or not isinstance(csrf, str) or not isinstance(binding, str):
            return None
        if not hmac.compare_digest(binding, self._binding):
            return None
        if not self._store.exists(_session_key(sid)):
            return None
        return Session(sid=sid, csrf=csrf)

    def close_session(self, session: Session) -> None:
        self._store.delete(_session_key(session.sid))

    @staticmethod
    def csrf_ok(session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(str(given).encode(), session.csrf.encode())
