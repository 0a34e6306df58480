"""The sign-in page's route and static files, without a browser (tests/test_page_browser.py drives it)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from corp.registry import Corp
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from web.runtime import get_runtime

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"
PAGE = f"/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"


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
    assert len(bundle) < 120_000
    assert f"`dingtalk-jsapi` {pinned}" in (STATIC / "vendor" / "README.md").read_text("utf-8")


def test_page_script_never_stores_or_prints_the_code_or_token() -> None:
    source = (STATIC / "channel-login.js").read_text("utf-8")
    for forbidden in ("localStorage", "sessionStorage", "document.cookie", "console.", "innerHTML"):
        assert forbidden not in source, forbidden
    assert "innerHTML" not in (STATIC / "sandbox-dd.js").read_text("utf-8")
