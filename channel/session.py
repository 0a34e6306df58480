"""The session token handed to the page: an ES256 JWT signed with the gateway's current key (`kid` in the header),
which the enterprise's system verifies with the public keys at `/.well-known/jwks.json`, holding no secret of ours.

`aud` is the corpid, so a token of one corp is refused where another corp's is expected; `iss` is GATEWAY_ISSUER.
"""

from __future__ import annotations

from typing import Any

from identity import tokens
from identity.keys import KeyRing


def session_claims(
    *,
    corpid: str,
    kind: str,
    openid: str | None,
    unionid: str,
    follower_id: str | None,
    userid: str | None,
    contact_type: int | None,
) -> dict[str, Any]:
    """The person's claims (gateway-contract.md): `sub` is the userid when linked, else `unionid:<unionid>`."""
    return {
        "sub": userid if userid else f"unionid:{unionid}",
        "corpid": corpid,
        "kind": kind,
        "unionid": unionid,
        "openid": openid,
        "follower_id": follower_id,
        "userid": userid,
        "contact_type": contact_type,
        "linked": userid is not None,
    }


def issue_token(keys: KeyRing, claims: dict[str, Any], *, issuer: str, ttl: int, now: float | None = None) -> str:
    """Sign a session token for `claims` (session_claims), audience the corp."""
    return tokens.sign(keys, claims, issuer=issuer, audience=claims["corpid"], ttl=ttl, now=now)


def verify_token(keys: KeyRing, token: str, *, issuer: str, corpid: str) -> dict[str, Any]:
    """Decode and check a session token for `corpid` (raises jwt.InvalidTokenError)."""
    return tokens.verify(keys, token, issuer=issuer, audience=corpid)
