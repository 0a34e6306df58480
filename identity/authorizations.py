"""What the OpenID Connect provider remembers between its steps, in the store, each item under the SHA-256 of its
secret (a dump of the store holds no usable handle, code or token):

    oidc:handle:{sha256}  an authorization request /oauth/authorize validated, until the page signs the person in
                          (single-use, 10 minutes)
    oidc:code:{sha256}    an authorization code: the request it answers and the person's claims (single-use, 60 s)
    oidc:spent:{sha256}   a code already exchanged, naming the access token it gave, so that a replay revokes that
                          token (RFC 6749 §4.1.2); lives as long as the token
    oidc:access:{sha256}  an access token for /oauth/userinfo: the client, scope and claims (its expires_in)

Single use is atomic: a handle is read and deleted in one command (GETDEL), and a code is taken and marked spent,
or found spent and its replay recorded, in one script; of two requests racing with the same one, exactly one gets
it, and the other's attempt revokes what the first got. The digest is the key's hash tag, so a code and its spent
marker share a Redis Cluster slot.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from kit.keys import global_key

HANDLE_TTL = 600  # the contract: a handle lives 10 minutes
CODE_TTL = 60  # the contract: a code lives 60 s
_PENDING = "-"  # a spent code whose access token is not stored yet
_REPLAYED = "!"  # a spent code presented again before its access token was stored


def fingerprint(secret: str) -> str:
    """The SHA-256 of a handle, code or token (hex): its key in the store, and, cut short, its name in logs."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _key(kind: str, secret: str) -> str:
    return _key_of(kind, fingerprint(secret))


def _key_of(kind: str, digest: str) -> str:
    return global_key("oidc", kind, "{" + digest + "}")


# KEYS: the code, its spent marker. ARGV: the marker's lifetime. Returns {the code's record or false, the marker
# as it was before a replay marked it, or false}.
_TAKE_CODE = f"""
local raw = redis.call('GETDEL', KEYS[1])
if raw then
  redis.call('SET', KEYS[2], '{_PENDING}', 'EX', ARGV[1])
  return {{raw, false}}
end
return {{false, redis.call('SET', KEYS[2], '{_REPLAYED}', 'XX', 'GET', 'KEEPTTL')}}
"""


@dataclass(frozen=True)
class PendingAuthorization:
    """An authorization request /oauth/authorize accepted, waiting for the person to sign in on the page."""

    client_id: str
    corpid: str
    redirect_uri: str
    scope: str
    response_type: str = "code"
    state: str | None = None
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None

    def params(self) -> dict[str, str]:
        """The request's parameters, as /oauth/authorize received them (those that were sent)."""
        names = ("client_id", "redirect_uri", "scope", "response_type", "state", "nonce", "code_challenge")
        params = {name: getattr(self, name) for name in names if getattr(self, name) is not None}
        if self.code_challenge_method is not None:
            params["code_challenge_method"] = self.code_challenge_method
        return params


@dataclass(frozen=True)
class IssuedCode:
    """What an authorization code stands for: the request it answers and who signed in (the session claims)."""

    client_id: str
    redirect_uri: str
    scope: str
    claims: dict[str, Any]
    auth_time: int
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None


@dataclass(frozen=True)
class AccessGrant:
    """What an access token allows: the person's claims, to the client, for the scope, until `expires_at`."""

    client_id: str
    scope: str
    claims: dict[str, Any] = field(default_factory=dict)
    issued_at: int = 0
    expires_at: int = 0


class Authorizations:
    """Handles, codes and access tokens of the OpenID Connect provider, in the shared store."""

    def __init__(self, store: redis.Redis, *, handle_ttl: int = HANDLE_TTL, code_ttl: int = CODE_TTL) -> None:
        self._store = store
        self.handle_ttl = handle_ttl
        self.code_ttl = code_ttl
        self._take_code = store.register_script(_TAKE_CODE)

    # -- handles: /oauth/authorize -> the page -> POST /channel/login ---------------------------------------------

    def open(self, pending: PendingAuthorization) -> str:
        """Keep a validated authorization request; return its handle (opaque, single-use)."""
        handle = secrets.token_urlsafe(32)
        self._store.set(_key("handle", handle), json.dumps(asdict(pending)), ex=self.handle_ttl)
        return handle

    def peek(self, handle: str) -> PendingAuthorization | None:
        """The request a handle stands for, if it is live, without using it up."""
        raw = self._store.get(_key("handle", handle))
        return PendingAuthorization(**json.loads(raw)) if raw else None

    def take(self, handle: str) -> PendingAuthorization | None:
        """Use a handle up: the request it stood for, or None when it is unknown, used or expired."""
        raw = self._store.getdel(_key("handle", handle))
        return PendingAuthorization(**json.loads(raw)) if raw else None

    # -- codes: POST /channel/login -> the client's redirect URI -> /oauth/token ----------------------------------

    def issue_code(self, code: str, issued: IssuedCode) -> None:
        self._store.set(_key("code", code), json.dumps(asdict(issued)), ex=self.code_ttl, nx=True)

    def take_code(self, code: str, *, token_ttl: int) -> tuple[IssuedCode | None, bool]:
        """Use a code up: (what it stands for, False); or (None, True) when it was exchanged before, in which case
        the access token it gave is revoked, now or as soon as it is stored; or (None, False) when it is unknown
        or expired."""
        found, before = self._take_code(
            keys=[_key("code", code), _key("spent", code)], args=[max(token_ttl, self.code_ttl)]
        )
        if found:
            return IssuedCode(**json.loads(found)), False
        if before is None:
            return None, False
        if before not in (_PENDING, _REPLAYED):
            self._store.delete(_key_of("access", before))
        return None, True

    # -- access tokens: /oauth/token -> /oauth/userinfo -----------------------------------------------------------

    def save_access_token(
        self, token: str, grant: AccessGrant, *, ttl: int, code: str | None = None, now: float | None = None
    ) -> None:
        """Keep an access token's grant for `ttl` seconds; `code` is the code it was exchanged for."""
        issued = int(time.time() if now is None else now)
        record = {**asdict(grant), "issued_at": issued, "expires_at": issued + ttl}
        self._store.set(_key("access", token), json.dumps(record), ex=ttl)
        if code is not None:
            # One command, so a replay of the code that lands meanwhile is never missed (see `take_code`).
            before = self._store.set(_key("spent", code), fingerprint(token), xx=True, get=True, ex=ttl)
            if before == _REPLAYED:
                self._store.delete(_key("access", token))

    def access(self, token: str) -> AccessGrant | None:
        """The grant of a live access token, or None."""
        raw = self._store.get(_key("access", token))
        return AccessGrant(**json.loads(raw)) if raw else None
