"""Turn a DingTalk answer into either its body or a typed error (dingtalk-oapi.md §6; the v1.0 API's non-2xx
statuses with string codes, §7.1), and read the fields of a success body (an errcode 0 answer whose field is missing
or malformed is an error too). Never reads errmsg (nor a v1.0 message) to decide."""

from __future__ import annotations

from typing import Any

from oapi.errors import CodeInvalid, RateLimited, TokenInvalid, UpstreamError, UpstreamUnavailable
from oapi.hints import MALFORMED_HINT, hint_for

TOKEN_INVALID = frozenset({33001, 40001, 40014, 42001})
CONFIGURATION = frozenset({40089, 40001, 60020, 60011})
CODE_INVALID = frozenset({40078, 40029})
RATE_LIMITED = frozenset({45009, 90002, 90005, 90006, 90018})
SYSTEM_BUSY = -1
# Tokens and tickets live 7200 s; a renewed ticket at most 24 h (dingtalk-oapi.md §1, §7.2). A lifetime outside
# 1 s .. 1 day is not DingTalk's, and caching by it would keep a credential for ever (or not at all).
MAX_EXPIRES_IN = 86_400

# api.dingtalk.com (v1.0): string codes (dingtalk-oapi.md §7.1).
V1_TOKEN_INVALID = frozenset({"InvalidAuthentication"})
V1_CONFIGURATION = frozenset(
    {
        "invalidClientIdOrSecret",
        "Forbidden.AccessDenied.IpNotInWhiteList",
        "Forbidden.AccessDenied.AccessTokenPermissionDenied",
        "Forbidden.AccessDenied.ApiCountLimitForOrg",
    }
)
V1_RATE_LIMIT_PREFIXES = ("Forbidden.AccessDenied.Qps", "Forbidden.AccessDenied.Qpm")
V1_BUSY = frozenset({"systemBusy", "system.busy"})


def is_configuration(errcode: int | str | None) -> bool:
    """Whether an error code means the registration is wrong (secret, whitelist, permission, quota): asking again
    cannot fix it, so a failed credential fetch remembers it briefly."""
    return errcode in CONFIGURATION or errcode in V1_CONFIGURATION


def v1_code(status: int, body: Any) -> str:
    """The string code of a v1.0 answer (empty for a success or a body without one)."""
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, str) else ""


def v1_retryable(status: int, body: Any, *, idempotent: bool) -> bool:
    """Whether a v1.0 answer is worth a bounded retry: 429 busy always, a 5xx only for an idempotent call."""
    if status == 429 or v1_code(status, body) in V1_BUSY:
        return True
    return idempotent and status >= 500


def classify_v1(
    api: str, status: int, body: dict[str, Any], *, token_fetch: bool
) -> UpstreamError | UpstreamUnavailable | None:
    """The error a v1.0 answer means (a non-2xx status with `{code, message, requestid}`), or None for success."""
    if 200 <= status < 300:
        return None
    code = v1_code(status, body)
    message = str(body.get("message", ""))[:200]
    kw: dict[str, Any] = {
        "errcode": code or status,
        "errmsg": message,
        "hint": hint_for(code or None),
        "upstream_status": status,
    }
    if code.startswith(V1_RATE_LIMIT_PREFIXES):
        return RateLimited(f"DingTalk rate-limited {api}", **kw)
    if status == 429 or code in V1_BUSY:
        return UpstreamUnavailable(f"DingTalk is busy ({api})", **kw)
    if status >= 500:
        return UpstreamUnavailable(f"DingTalk failed {api} (HTTP {status})", **kw)
    if code in V1_TOKEN_INVALID and not token_fetch:
        return TokenInvalid(f"DingTalk refused the access token for {api}", **kw)
    if code in V1_CONFIGURATION or token_fetch:
        return UpstreamError(f"DingTalk refused {api}: a configuration problem", **kw)
    return UpstreamError(f"DingTalk refused {api} (HTTP {status})", **kw)


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


def text_field(api: str, body: dict[str, Any], name: str) -> str:
    """The non-empty string `name` of a success body; anything else (absent, null, "", a number) is an error.

    Never `str(body[name])`: a null would become the string "None" and be cached or looked up as if real.
    """
    value = body.get(name)
    if isinstance(value, str) and value:
        return value
    raise malformed(api, body, f"no usable `{name}`")


def expires_in(api: str, body: dict[str, Any], name: str = "expires_in") -> int | None:
    """`expires_in` (v1.0: `expireIn`) of a success body in seconds, or None when absent (the caller assumes 7200)."""
    value = body.get(name)
    if value is None:
        return None
    # An int (a bool is one to Python, not to JSON), or the same written as digits; never 7200.5 or "2h".
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_EXPIRES_IN:
        return value
    raise malformed(api, body, f"`{name}` {str(value)[:20]!r} is not a lifetime in seconds (1..{MAX_EXPIRES_IN})")


def malformed(api: str, body: dict[str, Any], what: str) -> UpstreamError:
    """The error for a success answer the gateway cannot use: nothing of it is kept."""
    return UpstreamError(
        f"DingTalk answered {api} with success but {what}",
        hint=MALFORMED_HINT,
        errcode=_int(body.get("errcode")),
        errmsg=str(body.get("errmsg", ""))[:200],
    )
