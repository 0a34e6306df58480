"""The session token handed to the page: an HS256 JWT the enterprise's system verifies with any JWT library.

Key: HMAC-SHA256(GATEWAY_SECRET_KEY, "dtgw session-jwt v1"), so the existing system can derive it in two
lines without ever seeing the other keys derived from the same secret.
"""

from __future__ import annotations

import time
from typing import Any

import jwt

ISSUER = "dingtalk-channel-gateway"
ALGORITHM = "HS256"


def issue_token(
    key: bytes,
    *,
    corpid: str,
    openid: str | None,
    unionid: str,
    userid: str | None,
    ttl: int,
    kind: str = "channel",
    follower_id: str | None = None,
    contact_type: int | None = None,
    now: float | None = None,
) -> str:
    """Sign a session token; `sub` is the userid when linked, else `unionid:<unionid>`."""
    iat = int(now if now is not None else time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": userid if userid else f"unionid:{unionid}",
        "corpid": corpid,
        "kind": kind,
        "unionid": unionid,
        "openid": openid,
        "follower_id": follower_id,
        "userid": userid,
        "contact_type": contact_type,
        "linked": userid is not None,
        "iat": iat,
        "exp": iat + int(ttl),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_token(key: bytes, token: str) -> dict[str, Any]:
    """Decode and check a session token (raises jwt.InvalidTokenError)."""
    return jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["exp", "iat", "sub"]})
