"""The relying parties of the OpenID Connect provider (`flask client add|list|remove`): one hash in the store,
client_id -> the registration as JSON. A confidential client's secret is stored only as a SHA-256 hash: the secret
is 32 random bytes made here, so a fast hash is as good as a slow one, and the store never holds it.

Each client belongs to one corp: its people sign in through that corp's login app, and its redirect URIs are
matched exactly (RFC 6749 §3.1.2.3, no patterns).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from gateway.validation import UrlRefused, parse_web_url
from kit.keys import global_key

CLIENTS = global_key("oidc", "clients")
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._~\-]{1,64}$")  # RFC 6749's unreserved: safe in Basic auth without escaping
CLIENT_ID_SHAPE = "1-64 of A-Z a-z 0-9 . _ ~ -"
MAX_REDIRECT_URI = 2000
# A native app's private-use scheme names a domain it owns, reversed (RFC 8252 §7.1): com.example.app:/callback.
_PRIVATE_SCHEME = re.compile(r"[a-z][a-z0-9+\-]*(?:\.[a-z0-9+\-]+)+")
_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")
_SECRET_HASH = "sha256:"


@dataclass(frozen=True)
class Client:
    """A registered relying party. `secret_hash` is None for a public client (PKCE S256 instead of a secret)."""

    client_id: str
    corpid: str
    redirect_uris: tuple[str, ...]
    public: bool = False
    secret_hash: str | None = None
    registered_at: float = 0.0

    def check_secret(self, secret: str) -> bool:
        """True when `secret` is this confidential client's secret (constant-time)."""
        if self.public or not self.secret_hash or not secret:
            return False
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    def public_view(self) -> dict[str, Any]:
        """The registration without its secret's hash, for `flask client list`."""
        return {
            "client_id": self.client_id,
            "corpid": self.corpid,
            "type": "public" if self.public else "confidential",
            "redirect_uris": list(self.redirect_uris),
            "registered_at": self.registered_at,
        }


def new_secret() -> str:
    """A fresh client secret: 32 random bytes, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return _SECRET_HASH + hashlib.sha256(secret.encode()).hexdigest()


def redirect_uri_problem(uri: str) -> str | None:
    """Why `uri` cannot be a redirect URI, or None: an https URL, an http URL on the loopback interface (RFC 8252
    §7.3), or a native app's private-use scheme (RFC 8252 §7.1); never a fragment (RFC 6749 §3.1.2)."""
    if not uri or len(uri) > MAX_REDIRECT_URI:
        return f"must be 1-{MAX_REDIRECT_URI} characters"
    if "#" in uri:
        return "must not contain a fragment (#…)"
    scheme = uri.partition(":")[0].lower()
    if scheme in ("http", "https"):
        try:
            url = parse_web_url(uri)
        except UrlRefused as e:
            return str(e.reason)
        if url.scheme == "http" and not _loopback(url.host):
            return "http:// is allowed for the loopback interface only (127.0.0.1, [::1], localhost); use https://"
        return None
    if _PRIVATE_SCHEME.fullmatch(scheme) and not _CONTROL_OR_SPACE.search(uri):
        return None
    return (
        "must be an https:// URL, a loopback http:// URL, or a native app's reverse-domain scheme "
        "(com.example.app:/callback)"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ClientRegistry:
    """Reads and writes the registered clients. Every read goes to the store, so a `flask client remove` is seen
    by every worker at once."""

    def __init__(self, store: redis.Redis) -> None:
        self._store = store

    def add(self, client: Client) -> bool:
        """Register `client`, replacing any registration of its client_id; True when one was replaced."""
        record = {**asdict(client), "registered_at": client.registered_at or round(time.time(), 3)}
        created = self._store.hset(CLIENTS, client.client_id, json.dumps(record))
        return not created

    def get(self, client_id: str) -> Client | None:
        raw = self._store.hget(CLIENTS, client_id)
        return _load(raw) if raw else None

    def all(self) -> list[Client]:
        return sorted((_load(raw) for raw in self._store.hgetall(CLIENTS).values()), key=lambda c: c.client_id)

    def remove(self, client_id: str) -> bool:
        """Drop a client; True when there was one. Its outstanding codes and access tokens stop working at once
        (both are checked against the registration)."""
        return bool(self._store.hdel(CLIENTS, client_id))


def _load(raw: str) -> Client:
    data = json.loads(raw)
    data["redirect_uris"] = tuple(data["redirect_uris"])
    return Client(**data)
