"""`flask corp check` for the current-generation kinds (issue 17, item 3): the app token and ticket live, and each
usual mistake named with its fix, against the simulator's orgs, apps and injected errors."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from corp.registry import INTERNAL, SERVICE_WINDOW, Corp
from kit.sealing import fingerprint
from sandbox.apps import ACCESS_TOKEN, JSAPI_TICKETS
from sandbox.demo import (
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CORPID,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.followers import FOLLOWERS, GET_BY_UNIONID
from tests.helpers import ORIGIN
from web.runtime import get_runtime

REAL_ORG = Corp(
    corpid=DEMO_ORG_CORPID,
    kind=INTERNAL,
    agent_id=DEMO_APP_AGENT_ID,
    origins=(ORIGIN,),
    sign_hash="sha256",
    app_key=DEMO_APP_KEY,
    app_secret=DEMO_APP_SECRET,
)
WINDOW = Corp(
    corpid=DEMO_WINDOW_CORPID,
    kind=SERVICE_WINDOW,
    agent_id=DEMO_WINDOW_AGENT_ID,
    origins=(ORIGIN,),
    sign_hash="sha256",
    app_key=DEMO_WINDOW_APP_KEY,
    app_secret=DEMO_WINDOW_APP_SECRET,
    map_via=DEMO_ORG_CORPID,
    require_follow=True,
)
WINDOW_LINES = ["app", "ticket", "appkey", "org", "map_via", "mapping", "agent"]
INTERNAL_LINES = ["app", "ticket", "appkey", "org", "agent"]


def register(app: Any, *corps: Corp) -> None:
    for corp in corps:
        get_runtime(app).registry.add(corp)


def check(runner: Any, corpid: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run the command: exit code, each line's (mark, detail) by its check's name, and the whole output."""
    result = runner.invoke(args=["corp", "check", corpid])
    lines: dict[str, tuple[str, str]] = {}
    for line in result.output.splitlines():
        mark, name, detail = line.split(maxsplit=2)
        assert name not in lines, result.output
        lines[name] = (mark, detail)
    for secret in (DEMO_APP_SECRET, DEMO_WINDOW_APP_SECRET):
        assert secret not in result.output
    return result.exit_code, lines, result.output


def marks(lines: dict[str, tuple[str, str]]) -> dict[str, str]:
    return {name: mark for name, (mark, _) in lines.items()}


def test_internal_app_ok(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG)
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 0, output
    assert list(lines) == INTERNAL_LINES and set(marks(lines).values()) == {"ok"}, output
    # The token and ticket shown are DingTalk's current ones (fingerprints only), fetched live.
    token = sim.apps.current_token[DEMO_APP_KEY].value
    ticket = sim.apps.current_ticket[DEMO_APP_KEY].value
    assert f"token fp={fingerprint(token)}" in lines["app"][1]
    assert f"fp={fingerprint(ticket)}" in lines["ticket"][1] and "none cached yet" in lines["ticket"][1]
    assert token not in output and ticket not in output
    assert "real org's app" in lines["org"][1]
    assert DEMO_APP_AGENT_ID in lines["agent"][1] and "accepted" in lines["agent"][1]
    assert sim.app_controls.calls(ACCESS_TOKEN) == 1


def test_window_ok_probes_the_mapping_past_the_cache(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG, WINDOW)
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 0, output
    assert list(lines) == WINDOW_LINES and set(marks(lines).values()) == {"ok"}, output
    assert "service window's app" in lines["org"][1]
    assert "by unionid" in lines["map_via"][1]
    assert "errcode 60121" in lines["mapping"][1]
    assert sim.app_controls.calls(GET_BY_UNIONID, DEMO_APP_KEY) == 1
    assert sim.app_controls.calls(FOLLOWERS, DEMO_WINDOW_APP_KEY) == 1
    # Both apps' tokens were fetched live, and nothing was put in the gateway's caches by the check.
    assert sim.app_controls.calls(ACCESS_TOKEN) == 2
    rt = get_runtime(app)
    assert rt.app_client(rt.corp(DEMO_ORG_CORPID)).app_token.peek() is None


def test_a_window_without_map_via_skips_the_mapping(app: Any, runner: Any) -> None:
    register(app, replace(WINDOW, map_via=None))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 0, output
    assert lines["map_via"][0] == "skip" and "--map-via REALCORPID" in lines["map_via"][1]
    assert "mapping" not in lines


def test_wrong_app_secret(app: Any, runner: Any) -> None:
    register(app, REAL_ORG, replace(WINDOW, app_secret="not-the-app-secret"))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    assert lines["app"][0] == "FAIL" and "errcode=invalidClientIdOrSecret" in lines["app"][1], output
    assert "Wrong appKey/appSecret, or the appSecret was reset" in lines["app"][1]
    assert "无效的clientId或者clientSecret" in lines["app"][1]  # DingTalk's own words beside the hint
    assert marks(lines)["ticket"] == marks(lines)["org"] == marks(lines)["agent"] == "skip", output
    assert "not-the-app-secret" not in output


def test_ip_whitelist_of_the_token_fetch(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG)
    sim.app_controls.inject(
        ACCESS_TOKEN, 403, "Forbidden.AccessDenied.IpNotInWhiteList", message="访问ip不在白名单之中, ip=203.0.113.7"
    )
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 1
    mark, detail = lines["app"]
    assert mark == "FAIL" and "errcode=Forbidden.AccessDenied.IpNotInWhiteList" in detail, output
    assert "Add 203.0.113.7 to the app's IP whitelist" in detail


def test_ip_whitelist_of_the_map_via_app(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG, WINDOW)
    sim.app_controls.inject_topapi(GET_BY_UNIONID, 60020, message="访问ip不在白名单之中,request ip=203.0.113.8")
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    assert lines["mapping"][0] == "FAIL" and "errcode=60020" in lines["mapping"][1], output
    assert "Add 203.0.113.8 to the app's IP whitelist" in lines["mapping"][1]
    assert [n for n, m in marks(lines).items() if m != "ok"] == ["mapping"], output


def test_ticket_refused(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG)
    sim.app_controls.inject(JSAPI_TICKETS, 403, "Forbidden.AccessDenied.AccessTokenPermissionDenied", times=3)
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 1
    assert lines["ticket"][0] == "FAIL" and "No app JSAPI ticket" in lines["ticket"][1], output
    assert "permission" in lines["ticket"][1] and "没有调用该接口的权限" in lines["ticket"][1]
    assert lines["agent"][0] == "skip"


def test_the_real_orgs_corpid_registered_for_a_window(app: Any, runner: Any) -> None:
    """The classic: the real org's corpId and its internal app's appKey registered as the service window."""
    register(app, replace(WINDOW, corpid=DEMO_ORG_CORPID, app_key=DEMO_APP_KEY, app_secret=DEMO_APP_SECRET))
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 1
    assert lines["app"][0] == "ok", output
    mark, detail = lines["org"]
    assert mark == "FAIL" and "this appKey belongs to a real org's app, not the service window's virtual org" in detail
    assert "errcode=MissingParameter.AccountId" in detail and "accountId" in detail  # the simulator's code and text
    assert lines["map_via"][0] == "FAIL" and f"--map-via names {DEMO_ORG_CORPID} itself" in lines["map_via"][1]
    assert lines["mapping"][0] == "skip"


def test_a_real_orgs_app_key_under_the_windows_corpid(app: Any, runner: Any) -> None:
    register(app, replace(WINDOW, map_via=None, app_key=DEMO_APP_KEY, app_secret=DEMO_APP_SECRET))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    assert [n for n, m in marks(lines).items() if m == "FAIL"] == ["org", "agent"], output
    assert "belongs to a real org's app" in lines["org"][1]
    # The window's agent id names the window's app, whose ticket this is not.
    assert "errcode=52011" in lines["agent"][1]


def test_a_window_named_as_another_windows_real_org(app: Any, runner: Any) -> None:
    other = replace(WINDOW, corpid="dingotherwindow", app_key="dingotherkey", map_via=DEMO_WINDOW_CORPID)
    register(app, replace(WINDOW, map_via=None), other)
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    assert lines["org"][0] == "FAIL" and "dingotherwindow map followers via" in lines["org"][1], output
    assert "real org's corpId" in lines["org"][1]
    code, lines, output = check(runner, "dingotherwindow")
    assert code == 1
    assert "registered as kind service-window" in lines["map_via"][1] and "--kind internal" in lines["map_via"][1]


def test_the_same_app_key_under_two_corpids(app: Any, runner: Any) -> None:
    register(app, REAL_ORG, replace(REAL_ORG, corpid="dingtypo0001"))
    code, lines, output = check(runner, "dingtypo0001")
    assert code == 1
    mark, detail = lines["appkey"]
    assert mark == "FAIL" and f"also registered for {DEMO_ORG_CORPID} (kind internal)" in detail, output
    assert lines["app"][0] == "ok"  # DingTalk's token fetch takes no corpid: only the registry shows it


def test_the_map_via_apps_key_registered_for_the_window(app: Any, runner: Any) -> None:
    register(app, REAL_ORG, replace(WINDOW, app_key=DEMO_APP_KEY, app_secret=DEMO_APP_SECRET))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    mark, detail = lines["appkey"]
    assert mark == "FAIL" and f"its --map-via real org {DEMO_ORG_CORPID} are registered with the same appKey" in detail


def test_map_via_without_permission_for_getbyunionid(app: Any, runner: Any, sim: Any) -> None:
    register(app, REAL_ORG, WINDOW)
    sim.app_controls.inject_topapi(GET_BY_UNIONID, 60011, message="没有调用该接口的权限", app_key=DEMO_APP_KEY)
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    mark, detail = lines["mapping"]
    assert mark == "FAIL" and "errcode=60011" in detail, output
    assert f"may not call {GET_BY_UNIONID}" in detail and "qyapi_get_member" in detail


@pytest.mark.parametrize(
    ("map_via", "expect"),
    [
        ("dingnosuchorg", "--map-via dingnosuchorg is not registered"),
        (DEMO_CORPID, f"--map-via {DEMO_CORPID} is registered as kind channel"),  # the app fixture's legacy corp
    ],
)
def test_map_via_not_an_internal_app(app: Any, runner: Any, map_via: str, expect: str) -> None:
    register(app, replace(WINDOW, map_via=map_via))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    assert lines["map_via"][0] == "FAIL" and expect in lines["map_via"][1], output
    assert "--kind internal" in lines["map_via"][1]
    assert lines["mapping"][0] == "skip"


def test_a_windows_app_registered_as_internal(app: Any, runner: Any) -> None:
    register(app, replace(REAL_ORG, app_key=DEMO_WINDOW_APP_KEY, app_secret=DEMO_WINDOW_APP_SECRET))
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 1
    assert lines["org"][0] == "FAIL" and "register it with --kind service-window" in lines["org"][1], output


@pytest.mark.parametrize(("require_follow", "mark"), [(True, "FAIL"), (False, "skip")])
def test_follower_permission_matters_with_require_follow(
    app: Any, runner: Any, sim: Any, require_follow: bool, mark: str
) -> None:
    register(app, REAL_ORG, replace(WINDOW, require_follow=require_follow))
    sim.app_controls.inject(FOLLOWERS, 403, "Forbidden.AccessDenied.AccessTokenPermissionDenied")
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == (1 if require_follow else 0), output
    assert lines["org"][0] == mark and "Forbidden.AccessDenied.AccessTokenPermissionDenied" in lines["org"][1]
    assert ("OfficialAccount.Contact.Read" in lines["org"][1]) is require_follow


def test_wrong_agent_id(app: Any, runner: Any) -> None:
    register(app, REAL_ORG, replace(WINDOW, agent_id="999"))
    code, lines, output = check(runner, DEMO_WINDOW_CORPID)
    assert code == 1
    mark, detail = lines["agent"]
    assert mark == "FAIL" and "errcode=52019" in detail and "agent id 999" in detail, output
    assert DEMO_WINDOW_APP_KEY in detail


def test_the_ticket_line_says_whether_it_is_the_one_pages_are_signed_with(app: Any, runner: Any, sim: Any) -> None:
    from urllib.parse import quote

    register(app, REAL_ORG)
    page = quote(ORIGIN + "/", safe="")
    config = app.test_client().get(f"/channel/config?corpid={DEMO_ORG_CORPID}&agentid={DEMO_APP_AGENT_ID}&url={page}")
    assert config.status_code == 200
    code, lines, output = check(runner, DEMO_ORG_CORPID)
    assert code == 0, output
    # A repeat fetch renews the same ticket (§7.2): the live one is the one cached, which stays cached.
    cached = get_runtime(app).app_client(get_runtime(app).corp(DEMO_ORG_CORPID)).app_ticket.peek()
    assert cached is not None
    assert f"fp={cached.fingerprint} (dd.config type 0; the one cached)" in lines["ticket"][1]
    assert sim.app_controls.calls(JSAPI_TICKETS) == 2
