"""`flask corp check` and the console's self-test for the current-generation kinds (`internal`, `service-window`,
dingtalk-oapi.md §7): the app token fetched live past every cache, the app JSAPI ticket, and the usual mistakes
named with their fix: an appKey registered twice, a real org's app registered as a service window's (or the
reverse), a `--map-via` that is not the real org's internal app, and a `--map-via` app that may not look people up
by unionid. Each line is a corp/check.py CheckResult.
"""

from __future__ import annotations

from corp.check import CheckResult, check_agent
from corp.check_orgs import diagnose, fetch_token, mapping_checks, org_check, others
from corp.registry import SERVICE_WINDOW, Corp
from corp.runtime import Runtime
from kit.errors import Failure
from kit.sealing import fingerprint
from oapi.credentials import APP_TICKET
from oapi.errcodes import text_field


def check_app(rt: Runtime, corp: Corp, *, agent: bool = True) -> list[CheckResult]:
    """Every check of a current-generation app, in the order a person fixes them (`agent`: also the agent id, in a
    dd.config signed with the app's ticket)."""
    token, results = _app_token(rt, corp)
    ticket, ticket_result = _app_ticket(rt, corp, token)
    results += [ticket_result, _app_key(rt, corp), org_check(rt, corp, token)]
    if corp.kind == SERVICE_WINDOW:
        results += mapping_checks(rt, corp)
    if agent and ticket is None:
        results.append(CheckResult("agent", False, None, "Not checked: it needs the app ticket.", skipped=True))
    elif agent and ticket is not None:
        results.append(check_agent(rt, corp, ticket))
    return results


def _app_token(rt: Runtime, corp: Corp) -> tuple[str | None, list[CheckResult]]:
    token, error = fetch_token(rt, corp)
    if error is not None:
        return None, [CheckResult("app", False, error.errcode, diagnose(error))]
    fp = fingerprint(token)
    return token, [CheckResult("app", True, 0, f"token fp={fp} (appKey {corp.app_key})", fp)]


def _app_ticket(rt: Runtime, corp: Corp, token: str | None) -> tuple[str | None, CheckResult]:
    """The app's JSAPI ticket, fetched live with the token just fetched.

    Unlike the channel ticket, fetching it beside the cache is harmless: a repeat fetch returns the same ticket
    renewed (§7.2), so pages signed with the cached one keep working.
    """
    if token is None:
        return None, CheckResult("ticket", False, None, "Not checked: it needs the app token.", skipped=True)
    try:
        body = rt.openapi.call(
            APP_TICKET.api, {}, corpid=corp.corpid, app_key=corp.app_key, token=token, idempotent=True
        )
        ticket = text_field(APP_TICKET.api, body, "jsapiTicket")
    except Failure as e:
        return None, CheckResult("ticket", False, e.errcode, f"No app JSAPI ticket: {diagnose(e)}")
    fp = fingerprint(ticket)
    cached = rt.app_client(corp).app_ticket.peek()
    if cached is None:
        how = "none cached yet"
    elif cached.fingerprint == fp:
        how = "the one cached"
    else:
        how = (
            f"the cached one, fp={cached.fingerprint}, differs: if pages fail with 52013, force-refresh app_ticket "
            "in the support console"
        )
    return ticket, CheckResult("ticket", True, 0, f"app jsapi ticket fp={fp} (dd.config type 0; {how})", fp)


def _app_key(rt: Runtime, corp: Corp) -> CheckResult:
    """One app is one login app: the same appKey under two corpids means one of them carries another app's key
    (DingTalk's token fetch takes no corpid, so it cannot tell)."""
    twins = [o for o in others(rt, corp) if o.current and o.app_key == corp.app_key]
    if not twins:
        return CheckResult("appkey", True, 0, f"appKey {corp.app_key} is registered for {corp.corpid} only")
    via = next((o for o in twins if o.corpid == corp.map_via), None)
    if via is not None:
        diagnosis = (
            f"The window and its --map-via real org {via.corpid} are registered with the same appKey "
            f"{corp.app_key}: the window's app (in its virtual org) and the real org's internal app are two apps "
            "with two appKeys. Register each with its own app's appKey and appSecret."
        )
    else:
        names = ", ".join(f"{o.corpid} (kind {o.kind})" for o in twins)
        diagnosis = (
            f"appKey {corp.app_key} is also registered for {names}: an app belongs to one org, so one of these "
            "registrations carries another app's appKey. Copy each app's appKey and appSecret from its page in the "
            "developer console and register it again."
        )
    return CheckResult("appkey", False, None, diagnosis)
