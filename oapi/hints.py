"""One line per DingTalk errcode, telling a person what to check (seeded from dingtalk-oapi.md §4 and §6)."""

from __future__ import annotations

HINTS: dict[int, str] = {
    -1: "DingTalk reported 'system busy'; the gateway retried with backoff. Retry in a few seconds.",
    33001: "The access token was refused; the gateway refreshed it once. If this persists, check the app's state.",
    40001: (
        "The secret was refused (from gettoken: wrong corpSecret). Check the corp secret; a channel secret "
        "given as corp secret also fails this way."
    ),
    40014: "The access token is invalid (revoked or from the other pipeline); the gateway refreshed it once.",
    42001: "The access token expired; the gateway refreshed it once.",
    88: "DingTalk wrapped an auth error; see its sub_code.",
    40089: "Wrong corpid or secret: check CORPID and the secret registered with `flask corp add`.",
    60020: "The gateway's egress IP is not on the app's IP whitelist in the DingTalk developer console "
    "(the message names the IP to add).",
    60011: "The app has no permission for this API: grant it in the DingTalk developer console.",
    40078: "The auth code does not exist or was already used: the page must request a new code.",
    40029: "The auth code is invalid: the page must request a new code.",
    60121: "No user with this unionid in the corp: a follower with no employee or contact record.",
    43004: "Wrong Content-Type on a POST to DingTalk: a gateway bug, please report it.",
    45009: "DingTalk rate limit for this API: the gateway backs off; retry later.",
    90002: "DingTalk rate limit (per corp): the gateway backs off; retry later.",
    90005: "DingTalk rate limit (per app): the gateway backs off; retry later.",
    90006: "DingTalk rate limit (per API): the gateway backs off; retry later.",
    90018: "DingTalk rate limit (calls per second per corp and API): the gateway backs off; retry later.",
    1111: "DingTalk blocked the gateway's egress IP for too many calls (>10,000 in 20 s); it lifts after ~5 minutes.",
    # dd.config errors reported by the page (dd.error)
    52010: "dd.config: bad corpId. Check the corpid the page passes.",
    52011: "dd.config: ticket could not be read (from another corp/app, or expired). The gateway refreshes it.",
    52012: "dd.config: signature generation failed.",
    52013: "dd.config: signature check failed. Compare the signed url with the page's location.href "
    "(fragment dropped, same port); a stale ticket or wrong hash (sha1/sha256) also causes it.",
    52014: "dd.config: bad url.",
    52015: "dd.config: bad nonceStr.",
    52016: "dd.config: bad signature parameters.",
    52017: "dd.config: bad jsApiList.",
    52018: "dd.config: bad timeStamp.",
    52019: "dd.config: bad agentId. For a service window the ticket must come from corpid+channelSecret and "
    "`type` must be 1; check the page's agentid against the registered one.",
}


# api.dingtalk.com (v1.0) answers string codes (dingtalk-oapi.md §7.1). Each: (our hint, DingTalk's own text for it,
# "errmsg — explanation" as open.dingtalk.com's global error-code page `server-api-error-codes-1` and the follower
# APIs' pages list them, or None where no page has it). DingTalk's text stays beside ours so that a person can
# search DingTalk's documentation and forums with the words DingTalk uses.
_BUSY = "DingTalk reported 'system busy'; the gateway retried with backoff. Retry in a few seconds."
V1_CODES: dict[str, tuple[str, str | None]] = {
    "InvalidAuthentication": (
        "The app's access token was refused; the gateway refreshed it once. If this persists, check the app's state "
        "in the DingTalk developer console.",
        "不合法的access_token — access_token过期或者不存在，需要重新获取一下。",
    ),
    "invalidClientIdOrSecret": (
        "Wrong appKey/appSecret, or the appSecret was reset: copy both again from the app's credentials page in the "
        "DingTalk developer console and register them again with `flask corp add`.",
        "无效的clientId或者clientSecret",
    ),
    "Forbidden.AccessDenied.IpNotInWhiteList": (
        "The gateway's egress IP is not on the app's IP whitelist in the DingTalk developer console (add the IP "
        "DingTalk saw, where its message names it).",
        "访问ip不在白名单之中 — 企业应用：检查配置的服务器出口IP地址是否和请求IP地址一致。",
    ),
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": (
        "The app lacks the permission this API needs: grant it in the DingTalk developer console (the app's "
        "permission management), then publish the app again.",
        "没有调用该接口的权限 — 需要申请下接口权限。",
    ),
    "Forbidden.AccessDenied.ApiCountLimitForOrg": (
        "The org's monthly API quota (standard edition) is used up: upgrade the org's edition or wait for next month.",
        None,
    ),
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": (
        "DingTalk rate limit (calls per second per app and API): the gateway backs off; retry later.",
        "您的企业应用调用钉钉开放平台当前接口的所有请求都被暂时禁用了 — 当前企业应用调用开放接口触发了QPS限流。",
    ),
    "Forbidden.AccessDenied.QpsLimitForApi": (
        "DingTalk rate limit (per API): the gateway backs off; retry later.",
        "您的服务器调用钉钉开放平台当前接口的所有请求都被暂时禁用了 — 触发了当前开放接口的全局QPS限流。",
    ),
    "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi": (
        "DingTalk rate limit (calls per minute per app and API): the gateway backs off; retry later.",
        "您的企业应用调用钉钉开放平台当前接口的所有请求都被暂时禁用了 — 当前企业应用调用开放接口触发了QPM限流。",
    ),
    "systemBusy": (_BUSY, None),
    "system.busy": (_BUSY, "system busy — 请求过于频繁"),
    "systemError": ("DingTalk reported a server error; retry in a few seconds.", "system error. — 系统处理出错。"),
    # The service window's follower APIs (/v1.0/link/followers*): an app of a real org must pass accountId, the
    # window's own app (in its virtual org) must not.
    "illegalRequest.account": (
        "The service window account was refused: without accountId this means the appKey is a real org's app, not "
        "the service window's app in its virtual org.",
        "illegal account. — 服务窗账号不正确。",
    ),
    "illegalRequest": (
        "DingTalk refused the request; for the follower APIs, a service window's own app must not pass accountId.",
        "illegal request. — 请求异常。",
    ),
    "illegalParameter.userId": (
        "The follower's userId was refused: it must be the id from the service window app's own sign-in.",
        "illegal user id. — userId参数不正确。",
    ),
    "illegalRequest.followerNotExist": (
        "No such follower of the service window.",
        "follower not existed. — 根据传入的unionId或userId未未询到对应的关注人信息。",
    ),
    "request.too.fast": (
        "DingTalk rate limit of the service window APIs: the gateway backs off; retry later.",
        "request too fast. — 请求过快被限流。",
    ),
}
V1_HINTS: dict[str, str] = {code: hint for code, (hint, _) in V1_CODES.items()}
# The old API's text for the errcodes a person meets most (the same global error-code page).
_OAPI_TEXT: dict[int | str, str] = {
    60011: "没有调用该接口的权限",
    60020: "访问ip不在白名单之中",
    60121: "找不到该用户",
    40078: "不存在的临时授权码",
}
DINGTALK_TEXT: dict[int | str, str] = {
    **_OAPI_TEXT,
    **{code: text for code, (_, text) in V1_CODES.items() if text},
}


MALFORMED_HINT = (
    "DingTalk's success answer lacked a field the gateway needs, or had it malformed; nothing of it was cached, and "
    "the next request asks again. If this persists, check that DINGTALK_API_BASE really points at DingTalk."
)


def canonical_code(errcode: int | str) -> int | str:
    """An oapi errcode written as digits (as JSON or a store may give it back) is that number."""
    if isinstance(errcode, str) and errcode.lstrip("-").isdigit():
        return int(errcode)
    return errcode


def hint_for(errcode: int | str | None, default: str = "See DingTalk's error code documentation.") -> str:
    """The hint for an errcode (an oapi int, or a v1.0 string code), or a default."""
    if errcode is None:
        return default
    code = canonical_code(errcode)
    if isinstance(code, str):
        return V1_HINTS.get(code, default)
    return HINTS.get(code, default)


def dingtalk_text(errcode: int | str | None) -> str | None:
    """What DingTalk's documentation says an errcode means, in its own words (Chinese), where it says so."""
    if errcode is None:
        return None
    return DINGTALK_TEXT.get(canonical_code(errcode))
