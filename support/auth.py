"""Who may use the support console: the admin token (bearer) or a signed, expiring, revocable session cookie.

- The admin token is compared in constant time and never stored or echoed; the cookie holds a random session
  id, a CSRF token and a keyed tag of the admin token (rotating the token ends every session), signed with a
  key derived from GATEWAY_SECRET_KEY.
- Logout deletes the session's key in the store, so a copied cookie stops working too.
- Wrong tokens are counted per client IP in the store (`dtgw:v1:support:fail:<ip>`, sliding window); past the
  limit every attempt from that IP, right or wrong, gets 429 rate_limited (`TooManyRequests`, the contract's
  envelope) with Retry-After until the window passes; the HTML login form shows it as a message, also 429.
- A cookie-authenticated POST must carry the session's CSRF token (`X-CSRF-Token` header or `csrf` form field).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import redis
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.errors import TooManyRequests, Unauthorized
from gateway.sealing import derive_key
from gateway.store import global_key

COOKIE = "dtgw_support"
COOKIE_PATH = "/support"
CSRF_HEADER = "X-CSRF-Token"
DISABLED_HINT = "console disabled: set GATEWAY_ADMIN_TOKEN"

DEFAULT_SESSION_TTL = 8 * 3600
DEFAULT_MAX_FAILURES = 5
DEFAULT_FAIL_WINDOW = 300


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
    """The console's knobs, from the app config (tests override them)."""

    admin_token: str | None
    secret_key: str
    session_ttl: int = DEFAULT_SESSION_TTL
    max_failures: int = DEFAULT_MAX_FAILURES
    fail_window: int = DEFAULT_FAIL_WINDOW

    @classmethod
    def from_config(cls, config: Any) -> Settings:
        return cls(
            admin_token=config.get("GATEWAY_ADMIN_TOKEN") or None,
            secret_key=str(config["GATEWAY_SECRET_KEY"]),
            session_ttl=int(config.get("GATEWAY_SUPPORT_SESSION_TTL", DEFAULT_SESSION_TTL)),
            max_failures=int(config.get("GATEWAY_SUPPORT_MAX_FAILURES", DEFAULT_MAX_FAILURES)),
            fail_window=int(config.get("GATEWAY_SUPPORT_FAIL_WINDOW", DEFAULT_FAIL_WINDOW)),
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
    return global_key("support", "fail", ip or "unknown")


def _session_key(sid: str) -> str:
    # The store holds a hash of the id: a dump of Redis does not yield a usable cookie (which is signed anyway).
    return global_key("support", "session", hashlib.sha256(sid.encode()).hexdigest()[:32])


class Guard:
    """Checks credentials for one app: admin token, failure counter, session cookies."""

    def __init__(self, store: redis.Redis, settings: Settings) -> None:
        self._store = store
        self.settings = settings
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
        """Accept the admin token, or count a failure; raise Unauthorized / TooManyAttempts."""
        self.require_enabled()
        self.refuse_if_locked(ip)
        if token_matches(self.settings, given):
            self._store.delete(fail_key(ip))
            return
        pipe = self._store.pipeline(transaction=True)
        pipe.incr(fail_key(ip))
        pipe.expire(fail_key(ip), self.settings.fail_window)
        failures = int(pipe.execute()[0])
        if failures >= self.settings.max_failures:
            raise TooManyAttempts(
                "Wrong admin token; too many wrong tokens from this address", retry_after=self.settings.fail_window
            )
        raise Unauthorized("Wrong admin token", hint="Check GATEWAY_ADMIN_TOKEN; repeated wrong tokens are locked out.")

    def refuse_if_locked(self, ip: str) -> None:
        """Raise TooManyAttempts while this address is over the failure limit."""
        failures = int(self._store.get(fail_key(ip)) or 0)
        if failures >= self.settings.max_failures:
            ttl = int(self._store.ttl(fail_key(ip)))
            raise TooManyAttempts(
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
