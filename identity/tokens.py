"""Sign and verify the JWTs the gateway issues (session tokens, ID tokens) with the key ring's ES256 keys.

The `kid` header names the key, so a verifier picks it from the JWKS (PyJWT's PyJWKClient does), and a token
signed before a rotation verifies until it expires.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

from identity.keys import ALGORITHM, KeyRing


def sign(
    ring: KeyRing, claims: dict[str, Any], *, issuer: str, audience: str, ttl: int, now: float | None = None
) -> str:
    """Sign `claims` with the current key, adding iss, aud, iat and exp."""
    key = ring.signing_key()
    iat = int(time.time() if now is None else now)
    payload = {**claims, "iss": issuer, "aud": audience, "iat": iat, "exp": iat + int(ttl)}
    return jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def verify(ring: KeyRing, token: str, *, issuer: str, audience: str) -> dict[str, Any]:
    """Decode and check a token the gateway signed (any published key); raises jwt.InvalidTokenError."""
    kid = jwt.get_unverified_header(token).get("kid")
    keys = {k["kid"]: k for k in ring.jwks()["keys"]}
    if kid not in keys:
        raise jwt.InvalidTokenError("unknown or expired signing key")
    public = jwt.PyJWK(keys[kid]).key
    return jwt.decode(
        token,
        public,
        algorithms=[ALGORITHM],
        issuer=issuer,
        audience=audience,
        options={"require": ["exp", "iat", "sub", "iss", "aud"]},
    )
