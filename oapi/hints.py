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


# api.dingtalk.com (v1.0) answers string codes (dingtalk-oapi.md §7.1).
V1_HINTS: dict[str, str] = {
    "InvalidAuthentication": "The app's access token was refused; the gateway refreshed it once. If this persists, "
    "check the app's state in the DingTalk developer console.",
    "invalidClientIdOrSecret": "Wrong appKey or appSecret: check the app's credentials registered with "
    "`flask corp add` against the DingTalk developer console.",
    "Forbidden.AccessDenied.IpNotInWhiteList": "The gateway's egress IP is not on the app's IP whitelist in the "
    "DingTalk developer console.",
    "Forbidden.AccessDenied.AccessTokenPermissionDenied": "The app lacks the permission this API needs: grant it in "
    "the DingTalk developer console.",
    "Forbidden.AccessDenied.ApiCountLimitForOrg": "The org's monthly API quota (standard edition) is used up: upgrade "
    "the org's edition or wait for next month.",
    "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi": "DingTalk rate limit (calls per second per app and API): the "
    "gateway backs off; retry later.",
    "Forbidden.AccessDenied.QpsLimitForApi": "DingTalk rate limit (per API): the gateway backs off; retry later.",
    "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi": "DingTalk rate limit (calls per minute per app and API): the "
    "gateway backs off; retry later.",
    "systemBusy": "DingTalk reported 'system busy'; the gateway retried with backoff. Retry in a few seconds.",
    "system.busy": "DingTalk reported 'system busy'; the gateway retried with backoff. Retry in a few seconds.",
    "systemError": "DingTalk reported a server error; retry in a few seconds.",
}


MALFORMED_HINT = (
    "DingTalk's success answer lacked a field the gateway needs, or had it malformed; nothing of it was cached, and "
    "the next request asks again. If this persists, check that DINGTALK_API_BASE really points at DingTalk."
)


def hint_for(errcode: int | str | None, default: str = "See DingTalk's error code documentation.") -> str:
    """The hint for an errcode (an oapi int, or a v1.0 string code), or a default."""
    if errcode is None:
        return default
    if isinstance(errcode, str):
        return V1_HINTS.get(errcode, default)
    return HINTS.get(errcode, default)
