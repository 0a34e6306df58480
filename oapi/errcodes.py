"""Turn a DingTalk answer into either its body or a typed error (dingtalk-oapi.md §6). Never reads errmsg."""

from __future__ import annotations

from typing import Any

from gateway.errors import CodeInvalid, RateLimited, TokenInvalid, UpstreamError, UpstreamUnavailable
from oapi.hints import hint_for

TOKEN_INVALID = frozenset({33001, 40001, 40014, 42001})
CONFIGURATION = frozenset({40089, 40001, 60020, 60011})
CODE_INVALID = frozenset({40078, 40029})
RATE_LIMITED = frozenset({45009, 90002, 90005, 90006, 90018})
SYSTEM_BUSY = -1


def effective_errcode(body: dict[str, Any]) -> int:
    """The errcode that decides, unwrapping 88 (auth error) to its sub_code."""
    errcode = _int(body.get("errcode"))
    if errcode == 88:
        sub = _int(body.get("sub_code"))
        if sub:
            return sub
    return errcode


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0 if value is None else -99999


def classify(api: str, body: dict[str, Any], *, token_fetch: bool) -> UpstreamError | UpstreamUnavailable | None:
    """The error this answer means, or None for success."""
    raw = _int(body.get("errcode"))
    if raw == 0:
        return None
    errcode = effective_errcode(body)
    errmsg = str(body.get("errmsg", ""))[:200]
    kw: dict[str, Any] = {"errcode": raw, "errmsg": errmsg, "hint": hint_for(errcode)}
    if errcode in RATE_LIMITED:
        return RateLimited(f"DingTalk rate-limited {api}", **kw)
    if errcode == SYSTEM_BUSY:
        return UpstreamUnavailable(f"DingTalk is busy ({api})", **kw)
    if errcode in CODE_INVALID:
        return CodeInvalid("The auth code is unknown, used or expired", **kw)
    # From gettoken itself 40001 means a wrong secret, not a stale token.
    if errcode in TOKEN_INVALID and not token_fetch:
        return TokenInvalid(f"DingTalk refused the access token for {api}", **kw)
    if errcode in CONFIGURATION or token_fetch:
        return UpstreamError(f"DingTalk refused {api}: a configuration problem", **kw)
    return UpstreamError(f"DingTalk refused {api}", **kw)
