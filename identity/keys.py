"""The gateway's token-signing keys: ES256 (P-256) key pairs made here, private halves sealed in the store, public
halves published as a JWKS (`GET /.well-known/jwks.json`), so a relying system verifies tokens without any secret.

The ring is one hash in the store (one cluster slot):

    current        the kid that signs now
    key:<kid>      the private key, PKCS#8 PEM, sealed (kit/sealing.py) for `signing-key:<kid>`
    jwk:<kid>      the public key as a JWK (kid, alg, use)
    retired:<kid>  when a key stopped signing (unix seconds); absent for the current one

A retired key stays published until every token it signed has expired (`retired + max_token_ttl`), then is pruned
at the next rotation. Each worker re-reads the ring at most every `cache_ttl` seconds (5 s by default), so a
rotation reaches every worker within the contract's 10 s; until then a worker still signs with the previous key,
which verifiers accept because it is still published.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from dataclasses import dataclass

import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.errors import GatewayError
from kit.keys import global_key
from kit.sealing import Sealer, SealError

ALGORITHM = "ES256"
RING = global_key("signing-keys")
CURRENT = "current"


class KeysUnreadable(GatewayError):
    """The ring's private key does not open: GATEWAY_SECRET_KEY is not the one it was sealed with (500: the
    deployment's configuration, which a caller cannot fix)."""

    default_hint = (
        "The signing key was sealed under another GATEWAY_SECRET_KEY: restore that key, or run `flask keys rotate` "
        "to make a new signing key (tokens signed with the old one then stop verifying)."
    )


@dataclass(frozen=True)
class SigningKey:
    """The key that signs now: its kid (RFC 7638 thumbprint of the public key) and private half."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class PublishedKey:
    """A public key in the JWKS, for the console: kid, whether it signs now, and until when it is published."""

    kid: str
    current: bool
    retired_at: float | None
    published_until: float | None


def thumbprint(jwk: dict[str, str]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): a kid that names the key, not a counter."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_key() -> tuple[str, ec.EllipticCurvePrivateKey, dict[str, str]]:
    """A fresh P-256 key pair: (kid, private key, public JWK)."""
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    public = {k: str(v) for k, v in jwk.items()}
    kid = thumbprint(public)
    public.update(kid=kid, alg=ALGORITHM, use="sig")
    return kid, private, public


class KeyRing:
    """Reads and rotates the signing keys in the store; one per app, shared by every thread."""

    def __init__(self, store: redis.Redis, sealer: Sealer, *, max_token_ttl: int, cache_ttl: float = 5.0) -> None:
        self._store = store
        self._sealer = sealer
        self._max_token_ttl = max_token_ttl
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, SigningKey] | None = None

    def signing_key(self) -> SigningKey:
        """The key that signs now; made on first use, so a fresh deployment needs no `flask keys rotate`."""
        cached = self._cached
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        with self._lock:  # one re-read per worker, not one per thread
            cached = self._cached
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            key = self._read_current() or self._create_first()
            self._cached = (time.monotonic() + self._cache_ttl, key)
            return key

    def _read_current(self) -> SigningKey | None:
        kid = self._store.hget(RING, CURRENT)
        if kid is None:
            return None
        sealed = self._store.hget(RING, f"key:{kid}")
        if sealed is None:
            return None
        return SigningKey(kid, self._open(kid, sealed))

    def _open(self, kid: str, sealed: str) -> ec.EllipticCurvePrivateKey:
        try:
            pem = self._sealer.open(sealed, f"signing-key:{kid}")
        except SealError as e:
            raise KeysUnreadable(
                "The signing key does not open with this GATEWAY_SECRET_KEY: restore the old key, or run "
                "`flask keys rotate` to make a new one"
            ) from e
        key = serialization.load_pem_private_key(pem.encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeysUnreadable(f"signing key {kid} is not an EC key")
        return key

    def _create_first(self) -> SigningKey:
        """Make the first key; when several workers race, the first to set `current` wins and the rest adopt it."""
        kid, private, public = new_key()
        pipe = self._store.pipeline(transaction=True)
        pipe.hset(RING, mapping={f"key:{kid}": self._seal(kid, private), f"jwk:{kid}": json.dumps(public)})
        pipe.hsetnx(RING, CURRENT, kid)
        _, won = pipe.execute()
        if not won:
            self._store.hdel(RING, f"key:{kid}", f"jwk:{kid}")  # another worker's key is current: drop ours
            current = self._read_current()
            if current is None:
                raise KeysUnreadable("the signing key ring changed while it was being created; retry")
            return current
        return SigningKey(kid, private)

    def _seal(self, kid: str, private: ec.EllipticCurvePrivateKey) -> str:
        pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return self._sealer.seal(pem, f"signing-key:{kid}")

    def rotate(self, *, now: float | None = None) -> tuple[str, str | None]:
        """Make a new key the signing one; the previous stays published until its tokens expire. Returns (new kid,
        previous kid). Keys whose tokens have all expired are pruned."""
        now = time.time() if now is None else now
        kid, private, public = new_key()
        with self._store.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(RING)  # two rotations at once: one retries on the other's result
                    previous = pipe.hget(RING, CURRENT)
                    stale = self._expired(pipe.hgetall(RING), now)
                    pipe.multi()
                    pipe.hset(RING, mapping={f"key:{kid}": self._seal(kid, private), f"jwk:{kid}": json.dumps(public)})
                    if previous:
                        pipe.hset(RING, f"retired:{previous}", f"{now:.3f}")
                    pipe.hset(RING, CURRENT, kid)
                    for old in stale:
                        pipe.hdel(RING, f"key:{old}", f"jwk:{old}", f"retired:{old}")
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        with self._lock:
            self._cached = None  # this process signs with the new key at once; others within cache_ttl
        return kid, previous

    def _expired(self, fields: dict[str, str], now: float) -> list[str]:
        """Retired kids whose every token has expired."""
        return [
            name.removeprefix("retired:")
            for name, value in fields.items()
            if name.startswith("retired:") and float(value) + self._max_token_ttl < now
        ]

    def published(self, *, now: float | None = None) -> list[PublishedKey]:
        """The keys in the JWKS: the current one, then retired ones whose tokens may still be live (newest first)."""
        now = time.time() if now is None else now
        fields = self._store.hgetall(RING)
        current = fields.get(CURRENT)
        keys = []
        for name in fields:
            if not name.startswith("jwk:"):
                continue
            kid = name.removeprefix("jwk:")
            retired = fields.get(f"retired:{kid}")
            if kid == current:
                keys.append(PublishedKey(kid, True, None, None))
            elif retired is not None and float(retired) + self._max_token_ttl >= now:
                keys.append(PublishedKey(kid, False, float(retired), float(retired) + self._max_token_ttl))
        return sorted(keys, key=lambda k: (not k.current, -(k.retired_at or 0)))

    def jwks(self, *, now: float | None = None) -> dict[str, list[dict[str, str]]]:
        """The JWK Set of every published key (public halves only); makes the first key if there is none yet, so a
        verifier that fetches the JWKS before the first login finds the key that will sign."""
        self.signing_key()
        fields = self._store.hgetall(RING)
        return {"keys": [json.loads(fields[f"jwk:{k.kid}"]) for k in self.published(now=now)]}
