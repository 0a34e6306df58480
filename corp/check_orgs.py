"""The checks of a current-generation app's place (corp/check_apps.py runs them): whether the app lives in the org its
kind says (a service window's app in the window's virtual org, an internal app in a real org), and for a service
window its `--map-via` real org and that org's app's permission to look people up by unionid; with what every check
of these apps shares (reading a failure, fetching a token past the caches, the other registrations).
"""

from __future__ import annotations

from corp.check import CheckResult, not_whitelisted
from corp.registry import INTERNAL, SERVICE_WINDOW, Corp
from corp.runtime import Runtime
from kit.errors import Failure
from oapi.apps import API_BY_UNIONID, CurrentAppClient
from oapi.corp import NO_SUCH_USER
from oapi.errcodes import effective_errcode
from oapi.hints import dingtalk_text, hint_for

WHITELIST = frozenset({60020, "Forbidden.AccessDenied.IpNotInWhiteList"})
PERMISSION = frozenset({60011, "Forbidden.AccessDenied.AccessTokenPermissionDenied"})
FOLLOWERS_API = "v1.0/link/followers"
FOLLOW_PERMISSION = "服务窗联系人信息读权限 (OfficialAccount.Contact.Read)"  # the follower APIs' pages name it
# A unionid nobody has: getbyunionid answers it 60121 (not found) when the app may call the API at all, and a
# permission errcode when it may not. Its answer names no person.
PROBE_UNIONID = "dtgw-corp-check-probe"
REAL_ORG_APP = (
    "this appKey belongs to a real org's app, not the service window's virtual org: register the self-built "
    "service-window app (created in the window's virtual org) under the virtual org's corpId, or register this "
    "app with --kind internal"
)


def diagnose(error: Failure) -> str:
    """What a person should do about a failed call of a current-generation app, DingTalk's own words beside."""
    code = error.errcode
    if code in WHITELIST:
        advice = not_whitelisted(error.errmsg)
    elif code is None or not hint_for(code, ""):
        # No hint of ours: what the gateway and DingTalk said is the best lead.
        answered = f" (DingTalk: {error.errmsg})" if error.errmsg else ""
        advice = f"{error.message}{answered}. {error.hint}"
    else:
        advice = hint_for(code)
    documented = dingtalk_text(code)
    return f"{advice} (DingTalk: {documented})" if documented else advice


def _account_refused(code: int | str | None) -> bool:
    """Whether a follower API refused the call for its service window account (`accountId`).

    A real org's app must name the window (accountId) and a window's own app must not (§7.4). DingTalk's code for
    the missing account is not settled (its pages list `illegalRequest.account`; `inputParams.accountId.empty`
    exists too), so any code about the account counts.
    """
    return isinstance(code, str) and "account" in code.lower()


def fetch_token(rt: Runtime, app: Corp) -> tuple[str, Failure | None]:
    """A fresh token of a registered app, past every cache (its fingerprint may be shown), or the failure."""
    try:
        token, _ = CurrentAppClient.fetch_token(rt.openapi, app.corpid, app.app_key, app.app_secret)
    except Failure as e:
        return "", e
    return token, None


def others(rt: Runtime, corp: Corp) -> list[Corp]:
    """Every other registration whose secrets open (one that does not is its own check's failure)."""
    others = []
    for corpid in rt.registry.corpids():
        if corpid == corp.corpid:
            continue
        try:
            others.append(rt.registry.get(corpid))
        except Failure:
            continue
    return others


def org_check(rt: Runtime, corp: Corp, token: str | None) -> CheckResult:
    """Whether the app lives where its kind says: a service window's app in the window's virtual org, an internal
    app in a real org. The followers list tells: a real org's app must name the window (accountId), a window's own
    app must not (§7.4), so it is asked without accountId."""
    if corp.kind == SERVICE_WINDOW:
        referrers = [o.corpid for o in others(rt, corp) if o.map_via == corp.corpid]
        if referrers:
            return CheckResult(
                "org",
                False,
                None,
                f"{', '.join(referrers)} map followers via {corp.corpid}, which makes {corp.corpid} a real org's "
                "corpId; a service window's app is registered under its virtual org's corpId. Register the real "
                f"org's internal app under {corp.corpid} and this window under the virtual org's corpId.",
            )
    if token is None:
        return CheckResult("org", False, None, "Not checked: it needs the app token.", skipped=True)
    window = corp.kind == SERVICE_WINDOW
    try:
        rt.openapi.call(
            FOLLOWERS_API,
            {},
            corpid=corp.corpid,
            app_key=corp.app_key,
            token=token,
            idempotent=True,
            query={"maxResults": "1"},
        )
    except Failure as e:
        return _org_refused(corp, e)
    if window:
        return CheckResult(
            "org", True, 0, f"appKey {corp.app_key} is a service window's app (its followers list answers it)"
        )
    return CheckResult(
        "org",
        False,
        None,
        f"appKey {corp.app_key} reads a service window's followers without accountId, so it is a service window's "
        "app in a virtual org, not an employee micro-app: register it with --kind service-window under the virtual "
        "org's corpId.",
    )


def _org_refused(corp: Corp, error: Failure) -> CheckResult:
    code = error.errcode
    if _account_refused(code):
        if corp.kind == INTERNAL:
            return CheckResult("org", True, 0, f"appKey {corp.app_key} is a real org's app")
        return CheckResult("org", False, code, f"{REAL_ORG_APP} (DingTalk: {error.errmsg or code})")
    if corp.kind == SERVICE_WINDOW and (code in WHITELIST or (code in PERMISSION and corp.require_follow)):
        # --require-follow asks the follow status at every sign-in: what refuses this list refuses that too.
        need = f" --require-follow needs {FOLLOW_PERMISSION}." if code in PERMISSION else ""
        return CheckResult("org", False, code, f"The followers list was refused: {diagnose(error)}{need}")
    return CheckResult(
        "org",
        False,
        code,
        f"Could not tell which org appKey {corp.app_key} belongs to: the followers list answered {code}. "
        + diagnose(error),
        skipped=True,
    )


def mapping_checks(rt: Runtime, corp: Corp) -> list[CheckResult]:
    """The --map-via registration, then whether its app may look people up by unionid."""
    via_id = corp.map_via
    if not via_id:
        return [
            CheckResult(
                "map_via",
                False,
                None,
                "Not set: followers sign in with their virtual-org id only (follower_id, userid null); "
                "--map-via REALCORPID maps them to the real org's userid.",
                skipped=True,
            )
        ]
    needs = CheckResult("mapping", False, None, "Not checked: it needs a --map-via internal app.", skipped=True)
    if via_id == corp.corpid:
        fix = (
            f"--map-via names {corp.corpid} itself: this window is registered under the real org's corpId. Register "
            "the window under its virtual org's corpId, and the real org's internal app under the real org's."
        )
        return [CheckResult("map_via", False, None, fix), needs]
    try:
        via = rt.registry.get(via_id)
    except Failure:
        fix = (
            f"--map-via {via_id} is not registered: register the real org's internal app with `flask corp add "
            f"{via_id} --kind internal --app-key … --app-secret … --agent-id … --origin …`."
        )
        return [CheckResult("map_via", False, None, fix), needs]
    if via.kind != INTERNAL:
        fix = (
            f"--map-via {via_id} is registered as kind {via.kind}; it must be the real org's internal app: register "
            f"{via_id} again with --kind internal, or point --map-via at the real org."
        )
        return [CheckResult("map_via", False, None, fix), needs]
    found = f"{via_id} is the real org's internal app (appKey {via.app_key}); followers are mapped by {corp.map_by}"
    return [CheckResult("map_via", True, 0, found), _lookup_permission(rt, via)]


def _lookup_permission(rt: Runtime, via: Corp) -> CheckResult:
    """Ask the real org's app to look up a unionid nobody has: 60121 proves the permission, past every cache."""
    token, error = fetch_token(rt, via)
    if error is not None:
        return CheckResult("mapping", False, error.errcode, f"The --map-via app's token: {diagnose(error)}")
    try:
        body = rt.upstream.call(
            API_BY_UNIONID,
            {"access_token": token},
            corpid=via.corpid,
            idempotent=True,  # a lookup: resending it spends nothing
            json={"unionid": PROBE_UNIONID},
            accept=frozenset({NO_SUCH_USER}),
        )
    except Failure as e:
        if e.errcode in PERMISSION:
            return CheckResult(
                "mapping",
                False,
                e.errcode,
                f"{via.corpid}'s app (appKey {via.app_key}) may not call {API_BY_UNIONID}: grant it 成员信息读权限 "
                f"(qyapi_get_member) in the developer console and publish the app again (DingTalk: {e.errmsg}).",
            )
        return CheckResult("mapping", False, e.errcode, f"{API_BY_UNIONID} with {via.corpid}'s app: {diagnose(e)}")
    answer = effective_errcode(body)
    return CheckResult(
        "mapping",
        True,
        0,
        f"{via.corpid}'s app may call {API_BY_UNIONID} (a probe unionid was answered errcode {answer})",
    )
