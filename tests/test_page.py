"""The sign-in page's route and static files, without a browser (tests/test_page_browser.py drives it)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from corp.registry import INTERNAL, SERVICE_WINDOW, Corp
from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from web.runtime import get_runtime

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
PAGE = f"/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"
INTERNAL_PAGE = f"/channel/login?corpid={DEMO_ORG_CORPID}&agentid={DEMO_APP_AGENT_ID}"
WINDOW_PAGE = f"/channel/login?corpid={DEMO_WINDOW_CORPID}&agentid={DEMO_WINDOW_AGENT_ID}"


class Tags(HTMLParser):
    """Collect every start tag with its attributes, and the text of inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def scripts(html: str) -> list[str]:
    return [attrs["src"] or "" for tag, attrs in parse(html).tags if tag == "script" and attrs.get("src")]


def register(app: Any, **kw: Any) -> None:
    fields: dict[str, Any] = {
        "corpid": DEMO_CORPID,
        "agent_id": DEMO_AGENT_ID,
        "origins": ("https://h5.example.com",),
        "corp_secret": DEMO_CORP_SECRET,
        "channel_secret": DEMO_CHANNEL_SECRET,
    }
    fields.update(kw)
    get_runtime(app).registry.add(Corp(**fields))


def register_current(app: Any) -> None:
    """Register the demo's internal app and its service window (mapped into the internal app's org)."""
    registry = get_runtime(app).registry
    registry.add(
        Corp(
            corpid=DEMO_ORG_CORPID,
            kind=INTERNAL,
            agent_id=DEMO_APP_AGENT_ID,
            origins=("https://h5.example.com",),
            app_key=DEMO_APP_KEY,
            app_secret=DEMO_APP_SECRET,
        )
    )
    registry.add(
        Corp(
            corpid=DEMO_WINDOW_CORPID,
            kind=SERVICE_WINDOW,
            agent_id=DEMO_WINDOW_AGENT_ID,
            origins=("https://h5.example.com",),
            app_key=DEMO_WINDOW_APP_KEY,
            app_secret=DEMO_WINDOW_APP_SECRET,
            map_via=DEMO_ORG_CORPID,
            require_follow=True,
        )
    )


def main_attrs(html: str) -> dict[str, str | None]:
    return next(attrs for tag, attrs in parse(html).tags if tag == "main")


@pytest.fixture
def sandbox_app() -> Iterator[Any]:
    """The gateway in sandbox mode (its own simulator thread, stopped afterwards)."""
    from app import create_app

    application = create_app({"GATEWAY_SANDBOX": True, "REDIS_URL": None, "TESTING": True})
    yield application
    application.extensions["dtgw.simulator"].stop()


def test_page_loads_the_vendored_jsapi_then_the_page_script(client: Any) -> None:
    resp = client.get(PAGE)
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert scripts(html) == ["/static/vendor/dingtalk.open.js", "/static/channel-login.js"]
    assert 'lang="zh-CN"' in html and 'name="viewport"' in html
    assert f'data-corpid="{DEMO_CORPID}"' in html and f'data-agentid="{DEMO_AGENT_ID}"' in html
    assert 'data-landing-url=""' in html
    assert "sandbox" not in html.lower()


def test_sandbox_page_loads_the_simulated_container(sandbox_app: Any) -> None:
    html = sandbox_app.test_client().get(PAGE).get_data(as_text=True)
    assert scripts(html) == ["/static/sandbox-dd.js", "/static/channel-login.js"]
    assert 'id="sandbox-panel"' in html and "沙盒模式" in html


@pytest.mark.parametrize("path", [PAGE, "/channel/login?corpid=x&agentid=1", "/channel/login"])
def test_page_references_only_its_own_origin_and_has_no_inline_code(client: Any, path: str) -> None:
    tags = parse(client.get(path).get_data(as_text=True))
    assert tags.inline_scripts == []
    for tag, attrs in tags.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), f"inline handler {name} on <{tag}>"
            if name in ("src", "href", "action") and value:
                assert (value.startswith("/") and not value.startswith("//")) or value == "data:,", value


@pytest.mark.parametrize(
    ("query", "status", "problem", "text"),
    [
        ("", 400, "missing", "链接不完整"),
        (f"?corpid={DEMO_CORPID}", 400, "missing", "链接不完整"),
        ("?corpid=nosuchcorp&agentid=1", 404, "unknown_corp", "该企业尚未接入"),
        (f"?corpid={DEMO_CORPID}&agentid=999", 400, "agent_mismatch", "应用 ID 不匹配"),
    ],
)
def test_a_link_that_cannot_work_gets_a_friendly_page(
    client: Any, query: str, status: int, problem: str, text: str
) -> None:
    resp = client.get(f"/channel/login{query}")
    assert resp.status_code == status
    assert resp.mimetype == "text/html"
    html = resp.get_data(as_text=True)
    assert text in html
    assert 'data-state="problem"' in html
    assert scripts(html) == []  # nothing to run


def test_upstream_and_user_data_are_escaped(app: Any, client: Any) -> None:
    evil = '"><script>alert(1)</script>'
    html = client.get("/channel/login?corpid=" + evil.replace("<", "%3C") + "&agentid=1").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html

    register(app, landing_url='https://app.example.com/"><script>alert(2)</script>')
    html = client.get(PAGE).get_data(as_text=True)
    assert "<script>alert(2)" not in html
    assert 'data-landing-url="https://app.example.com/&#34;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"' in html


def test_landing_url_is_handed_to_the_page(app: Any, client: Any) -> None:
    register(app, landing_url="https://app.example.com/welcome")
    html = client.get(PAGE).get_data(as_text=True)
    assert 'data-landing-url="https://app.example.com/welcome"' in html


@pytest.mark.parametrize(
    "path",
    [
        "/static/channel-login.js",
        "/static/channel-login.css",
        "/static/sandbox-dd.js",
        "/static/vendor/dingtalk.open.js",
    ],
)
def test_static_files_are_served(client: Any, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    resp.close()


def test_no_static_file_names_another_host() -> None:
    """Nothing the page loads can reach a CDN: no absolute URL in any script or style."""
    for name in ("channel-login.js", "channel-login.css", "sandbox-dd.js", "vendor/dingtalk.open.js"):
        path = STATIC / name
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text("utf-8"), re.I), path


def test_vendored_jsapi_is_the_pinned_package() -> None:
    """static/vendor/dingtalk.open.js says which dingtalk-jsapi it was built from: the one package-lock pins."""
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["dingtalk-jsapi"]
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]["node_modules/dingtalk-jsapi"]
    assert locked["version"] == pinned and locked["license"] == "MIT"
    bundle = (STATIC / "vendor" / "dingtalk.open.js").read_text("utf-8")
    assert bundle.startswith(f"/*! dingtalk-jsapi {pinned} (MIT")
    assert "channel.permission.requestAuthCode" in bundle
    # The current kinds' code (dd.requestAuthCode, "runtime.permission.requestAuthCodeV2" inside the SDK), the
    # archived fallback, and the SDK's version check the page chooses between them with.
    assert "runtime.permission.requestAuthCodeV2" in bundle
    assert "runtime.permission.requestAuthCode" in bundle.replace("runtime.permission.requestAuthCodeV2", "")
    assert "checkJsApi" in bundle
    assert len(bundle) < 120_000
    assert f"`dingtalk-jsapi` {pinned}" in (STATIC / "vendor" / "README.md").read_text("utf-8")


def test_page_script_never_stores_or_prints_the_code_or_token() -> None:
    source = (STATIC / "channel-login.js").read_text("utf-8")
    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "console.", "innerHTML"):
        assert forbidden not in source, forbidden
    assert "innerHTML" not in (STATIC / "sandbox-dd.js").read_text("utf-8")


# ---- the current-generation kinds (issue 17) ---------------------------------------------------------------


def test_legacy_page_says_its_kind_and_has_no_client_id(client: Any) -> None:
    html = client.get(PAGE).get_data(as_text=True)
    attrs = main_attrs(html)
    assert attrs["data-kind"] == "channel" and attrs["data-client-id"] == ""
    assert "<title>服务窗登录</title>" in html and "模拟" not in html
    assert 'id="view-not-following"' not in html


@pytest.mark.parametrize(
    ("path", "kind", "client_id", "title", "secret"),
    [
        (INTERNAL_PAGE, "internal", DEMO_APP_KEY, "企业应用登录", DEMO_APP_SECRET),
        (WINDOW_PAGE, "service-window", DEMO_WINDOW_APP_KEY, "服务窗登录", DEMO_WINDOW_APP_SECRET),
    ],
)
def test_current_app_page_carries_its_kind_and_client_id(
    app: Any, client: Any, path: str, kind: str, client_id: str, title: str, secret: str
) -> None:
    register_current(app)
    resp = client.get(path)
    assert resp.status_code == 200
    html = resp.get_data(as_text=True)
    attrs = main_attrs(html)
    assert attrs["data-kind"] == kind and attrs["data-client-id"] == client_id
    assert f"<title>{title}</title>" in html
    assert scripts(html) == ["/static/vendor/dingtalk.open.js", "/static/channel-login.js"]
    assert secret not in html and DEMO_CORP_SECRET not in html
    # Only a service window that may refuse unfollowed people has the view that says so.
    assert ('id="view-not-following"' in html) is (kind == "service-window")
    assert ('id="success-follower"' in html) is (kind == "service-window")


def test_current_app_wording_of_a_wrong_agent(app: Any, client: Any) -> None:
    register_current(app)
    resp = client.get(f"/channel/login?corpid={DEMO_ORG_CORPID}&agentid=999")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 400 and "应用 ID 不匹配" in html and "企业登记的应用不一致" in html
    assert main_attrs(html)["data-kind"] == "internal"


def test_sandbox_registers_one_demo_app_of_each_kind(sandbox_app: Any) -> None:
    registry = get_runtime(sandbox_app).registry
    kinds = {c: registry.get(c).kind for c in (DEMO_CORPID, DEMO_ORG_CORPID, DEMO_WINDOW_CORPID)}
    assert kinds == {DEMO_CORPID: "channel", DEMO_ORG_CORPID: "internal", DEMO_WINDOW_CORPID: "service-window"}
    window = registry.get(DEMO_WINDOW_CORPID)
    assert window.map_via == DEMO_ORG_CORPID and window.require_follow
    for path, kind in [(PAGE, "channel"), (INTERNAL_PAGE, "internal"), (WINDOW_PAGE, "service-window")]:
        html = sandbox_app.test_client().get(path).get_data(as_text=True)
        assert main_attrs(html)["data-kind"] == kind
        assert scripts(html) == ["/static/sandbox-dd.js", "/static/channel-login.js"]


@pytest.mark.parametrize(
    ("query", "kind", "ids"),
    [
        ("", "channel", [(p["name"], p["unionid"]) for p in DEMO_PEOPLE]),
        (f"?corpid={DEMO_CORPID}", "channel", [(p["name"], p["unionid"]) for p in DEMO_PEOPLE]),
        (
            f"?corpid={DEMO_ORG_CORPID}",
            "internal",
            [(m["name"], m["userid"]) for m in DEMO_MEMBERS if m["contact_type"] == 0],
        ),
        (f"?corpid={DEMO_WINDOW_CORPID}", "service-window", [(f["name"], f["userid"]) for f in DEMO_FOLLOWERS]),
    ],
)
def test_sandbox_people_per_corp(sandbox_app: Any, query: str, kind: str, ids: list[tuple[str, str]]) -> None:
    resp = sandbox_app.test_client().get(f"/sandbox/people{query}")
    body = resp.get_json()
    assert resp.status_code == 200 and body["kind"] == kind
    key = "unionid" if kind == "channel" else "userid"
    assert [(p["name"], p[key]) for p in body["people"]] == ids
    assert all(p["label"] for p in body["people"])
    text = resp.get_data(as_text=True)
    for secret in (DEMO_APP_SECRET, DEMO_WINDOW_APP_SECRET, DEMO_CORP_SECRET, DEMO_CHANNEL_SECRET):
        assert secret not in text


def test_sandbox_people_of_an_unknown_corp_is_404(sandbox_app: Any) -> None:
    resp = sandbox_app.test_client().get("/sandbox/people?corpid=nosuchcorp")
    assert resp.status_code == 404 and resp.get_json()["error"]["code"] == "unknown_corp"


@pytest.mark.parametrize("with_client_id", [True, False], ids=["requestAuthCode", "runtime.permission"])
@pytest.mark.parametrize(
    ("corpid", "client_id", "userid", "expected"),
    [
        (DEMO_ORG_CORPID, DEMO_APP_KEY, "manager0001", {"userid": "manager0001", "contact_type": 0}),
        (DEMO_WINDOW_CORPID, DEMO_WINDOW_APP_KEY, "vfollower0002", {"userid": "ext0001", "contact_type": 1}),
        (DEMO_WINDOW_CORPID, DEMO_WINDOW_APP_KEY, "vfollower0003", {"userid": None, "linked": False}),
    ],
)
def test_sandbox_app_code_signs_the_chosen_person_in(
    sandbox_app: Any, corpid: str, client_id: str, userid: str, expected: dict[str, Any], with_client_id: bool
) -> None:
    """The simulated container's dd.requestAuthCode (clientId sent) and its older API (none: the corp's app)."""
    client = sandbox_app.test_client()
    body = {"corpid": corpid, "userid": userid} | ({"client_id": client_id} if with_client_id else {})
    code = client.post("/sandbox/client/app_code", json=body).get_json()["code"]
    login = client.post("/channel/login", json={"corpid": corpid, "code": code})
    assert login.status_code == 200, login.get_data(as_text=True)
    assert expected.items() <= login.get_json().items()


def test_sandbox_app_code_refuses_a_stranger_or_another_app(sandbox_app: Any) -> None:
    client = sandbox_app.test_client()
    stranger = {"corpid": DEMO_ORG_CORPID, "client_id": DEMO_APP_KEY, "userid": "vfollower0001"}
    assert client.post("/sandbox/client/app_code", json=stranger).get_json()["errcode"] != 0
    wrong_app = {"corpid": DEMO_ORG_CORPID, "client_id": DEMO_WINDOW_APP_KEY, "userid": "manager0001"}
    assert client.post("/sandbox/client/app_code", json=wrong_app).get_json()["errcode"] != 0
