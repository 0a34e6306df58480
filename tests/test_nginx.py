"""The production front: the repo's nginx.conf in a real nginx, before gunicorn (2 workers) and a real Redis.

The stack is the one `scripts/serve` starts (sandbox/stack.py), in sandbox mode against one shared simulator
process. Skipped without nginx, except under CI=true, where a missing nginx is a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import runpy
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
import requests

from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID
from sandbox.nginx import render_nginx_conf
from sandbox.processes import free_port
from sandbox.stack import Stack
from tests.helpers import CI, EMPLOYEE

pytestmark = pytest.mark.nginx

ROOT = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


@pytest.fixture(scope="module", autouse=True)
def need_nginx() -> None:
    missing = [name for name, path in (("nginx", NGINX), ("openssl", shutil.which("openssl"))) if not path]
    if missing:
        if CI:
            pytest.fail(f"CI=true but {', '.join(missing)} missing: .ci/run must install Debian's nginx")
        pytest.skip(f"needs {', '.join(missing)}")


@pytest.fixture(scope="module")
def stack(need_nginx: None, redis_url: str) -> Iterator[Any]:
    """nginx (TLS on a free loopback port) -> gunicorn (2 workers, ProxyFix on) -> real Redis + simulator."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    running = Stack(workers=2, https_port=free_port(), redis_url=redis_url, nginx=NGINX)
    running.start()
    yield running
    running.stop()
    assert all(proc.poll() is not None for _, proc in running.procs) and not running.workdir.exists()


@pytest.fixture
def https(stack: Any) -> Iterator[requests.Session]:
    """A session against the public https:// side, trusting the stack's throwaway self-signed certificate."""
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise win over `verify`
    session.verify = str(stack.cert)
    yield session
    session.close()


def connection(stack: Any, source_ip: str) -> http.client.HTTPSConnection:
    """An HTTPS connection from a chosen loopback address, to act as a distinct client IP."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http.client.HTTPSConnection(
        "127.0.0.1", stack.https_port, timeout=10, context=context, source_address=(source_ip, 0)
    )


def post_json(conn: http.client.HTTPSConnection, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    return resp.status, json.loads(data) if data else {}


def access_log_lines(stack: Any, needle: str, log: Path | None = None) -> list[str]:
    """Access log lines containing needle: gunicorn's, or `log` (nginx's). Both are written as a request ends,
    after the client may already have its answer, so wait for the line (a loaded machine is slow to write it)."""
    path = log or stack.access_log
    deadline = time.monotonic() + 10
    while True:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        lines = [line for line in text.splitlines() if needle in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def page_url(stack: Any) -> str:
    return f"{stack.public_url}/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&from=menu+x#/home"


# ---- the file itself --------------------------------------------------------------------------------------------


def rendered(server_name: str = "h5.example.com") -> Any:
    """A Stack with nginx.conf substituted into its work dir (nothing started); stop() removes it."""
    return Stack(https_port=free_port(), server_name=server_name, redis_url="redis://unused", nginx=NGINX)


def test_nginx_t_passes_on_the_substituted_config() -> None:
    stack = rendered()
    try:
        stack.render()
        result = stack.check_nginx()
    finally:
        stack.stop()
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr and "test is successful" in result.stderr


def test_every_placeholder_must_be_given() -> None:
    with pytest.raises(ValueError, match="__TLS_KEY__"):
        render_nginx_conf({"TLS_CERT": "/c.pem"}, template="ssl_certificate __TLS_CERT__; key __TLS_KEY__;")


def test_proxy_timeouts_are_below_gunicorns() -> None:
    stack = rendered()
    try:
        text = stack.render().read_text()
    finally:
        stack.stop()
    # gunicorn.conf.py sets PROMETHEUS_MULTIPROC_DIR when run: keep that out of this process's environment, or
    # every later test's metrics go to files (test_app's metrics test then fails, depending on order).
    with mock.patch.dict(os.environ):
        gunicorn_timeout = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["timeout"]
    timeouts = {name: int(value) for name, value in re.findall(r"(proxy_\w+_timeout)\s+(\d+)s;", text)}
    assert set(timeouts) == {"proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout"}
    assert max(timeouts.values()) < gunicorn_timeout


# ---- end to end -------------------------------------------------------------------------------------------------


def test_config_behind_nginx_signs_the_public_url(stack: Any, https: requests.Session) -> None:
    page = page_url(stack)
    resp = https.get(
        f"{stack.public_url}/channel/config",
        params={"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID},
        headers={"Referer": page, "X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "http"},
    )
    assert resp.status_code == 200, resp.text
    config = resp.json()
    # The browser's https:// URL, fragment dropped, query form-decoded (dingtalk-oapi.md §4).
    assert config["url"] == page.split("#")[0].replace("+", " ")
    assert config["url"].startswith(f"https://127.0.0.1:{stack.https_port}/")

    check = https.post(f"{stack.api_base}/_client/check_config", json={**config, "url": page}, timeout=5)
    assert check.json() == {"ok": True}

    # What the app saw (gunicorn logs the WSGI environ after ProxyFix): nginx's hop, the public scheme and host,
    # the Referer, nginx's request id; the client's forged X-Forwarded-* did not get through.
    [line] = access_log_lines(stack, "/channel/config")
    assert line.startswith("127.0.0.1 ")
    assert "scheme=https" in line and f"host=127.0.0.1:{stack.https_port}" in line
    assert f'referer="{page}"' in line
    assert f"rid={resp.headers['X-Request-Id']}" in line
    assert "203.0.113.9" not in line


def test_follower_signs_in_through_nginx(stack: Any, https: requests.Session) -> None:
    minted = https.post(
        f"{stack.api_base}/_client/auth_code", json={"corpid": DEMO_CORPID, "unionid": EMPLOYEE["unionid"]}, timeout=5
    )
    code = minted.json()["code"]
    resp = https.post(f"{stack.public_url}/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["linked"] is True and body["userid"] == EMPLOYEE["userid"] and body["token"]
    assert "gzip" not in resp.headers.get("Content-Encoding", "")  # JSON with a token is never compressed


def test_static_asset_is_served_by_nginx_not_the_app(stack: Any, https: requests.Session) -> None:
    resp = https.get(f"{stack.public_url}/static/robots.txt")
    assert resp.status_code == 200
    assert resp.text == (ROOT / "static" / "robots.txt").read_text()
    assert resp.headers["X-Served-By"] == "nginx-static"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert "X-Request-Id" not in resp.headers  # the app stamps one on everything it answers
    https.get(f"{stack.public_url}/healthz")  # a request the app does see, so the log is known to be written
    assert access_log_lines(stack, "/healthz")
    assert access_log_lines(stack, "/static/") == []


def test_page_gets_security_headers_and_gzip(stack: Any, https: requests.Session) -> None:
    resp = https.get(page_url(stack), headers={"Accept-Encoding": "gzip"})
    assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/html")
    assert resp.headers["Content-Encoding"] == "gzip"
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'self'" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")


def test_plain_http_redirects_to_https(stack: Any) -> None:
    resp = requests.get(
        f"{stack.http_url}/channel/login?corpid=x", allow_redirects=False, timeout=5, headers={"Host": "evil.example"}
    )
    assert resp.status_code == 301
    assert resp.headers["Location"] == f"{stack.public_url}/channel/login?corpid=x"


def test_oversized_body_is_refused_by_nginx(stack: Any) -> None:
    conn = connection(stack, "127.0.0.4")
    status, body = post_json(conn, "/channel/config/error", {"pad": "x" * 100_000})
    conn.close()
    assert status == 413 and body["error"]["code"] == "invalid_request"


def test_metrics_only_for_the_host_itself(stack: Any) -> None:
    conn = connection(stack, "127.0.0.5")
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 403


def test_flooding_login_from_one_address_gets_429(stack: Any, https: requests.Session) -> None:
    """A flood is cut off once past the burst (limit_req: 5 r/s, burst 10). The flood runs until its first 429, so
    a slow, loaded machine sends more requests instead of failing: what is asserted is where the cut comes."""
    conn = connection(stack, "127.0.0.2")
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 300:
        status, body = post_json(conn, "/channel/login", {"corpid": DEMO_CORPID, "code": "bogus"})
        statuses.append(status)
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
    conn.close()
    assert statuses[0] == 401  # the app's code_invalid: the first requests get through
    assert statuses[-1] == 429, statuses
    assert statuses.count(401) >= 10  # the burst went through before the cut
    # Per client address: another one still signs in.
    code = https.post(
        f"{stack.api_base}/_client/auth_code", json={"corpid": DEMO_CORPID, "unionid": EMPLOYEE["unionid"]}, timeout=5
    ).json()["code"]
    other = connection(stack, "127.0.0.3")
    status, body = post_json(other, "/channel/login", {"corpid": DEMO_CORPID, "code": code})
    other.close()
    assert status == 200 and body["linked"] is True


def test_flooding_config_error_reports_gets_429(stack: Any) -> None:
    """Reports are cut off once past their burst (1 r/s, burst 5), however slowly a loaded machine sends them."""
    conn = connection(stack, "127.0.0.4")
    report = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": "https://x.example/", "errorCode": 52013}
    statuses: list[int] = []
    while 429 not in statuses and len(statuses) < 100:
        statuses.append(post_json(conn, "/channel/config/error", report)[0])
    conn.close()
    assert statuses[0] == 202  # recorded by the app
    assert statuses[-1] == 429, statuses
    assert statuses.count(202) >= 5  # the burst went through before the cut


def test_metrics_add_up_across_gunicorn_workers(stack: Any) -> None:
    """Whichever worker answers /metrics, it reports every worker's requests (prometheus multiprocess mode)."""
    import re

    def healthz_count() -> float:
        text = requests.get(f"{stack.gunicorn_url}/metrics", timeout=5).text
        found = re.findall(
            r'^dtgw_http_requests_total\{endpoint="healthz",method="GET",status="200"\} (\S+)$', text, re.M
        )
        return float(found[0]) if found else 0.0

    before = healthz_count()
    for _ in range(40):  # new connections, so both workers serve some of them
        assert requests.get(f"{stack.gunicorn_url}/healthz", timeout=5).status_code == 200
    counts = {healthz_count() for _ in range(6)}
    assert counts == {before + 40}, counts


# ---- issue 15: large pushes, long request lines, security headers, access logs ---------------------------------


def raw_get(conn: http.client.HTTPConnection, target: str, headers: dict[str, str] | None = None) -> Any:
    """GET `target` as given (no re-encoding); the response, its body read."""
    conn.request("GET", target, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()
    return resp


def padded_target(length: int) -> str:
    """A /channel/config target whose request line (`GET … HTTP/1.1`) is exactly `length` bytes."""
    base = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&pad="
    return base + "a" * (length - len("GET ") - len(base) - len(" HTTP/1.1"))


def test_request_lines_of_any_length_get_the_json_error(stack: Any) -> None:
    """Old code: lines of 4095-8190 bytes got gunicorn's HTML 400, longer ones nginx's HTML 414."""
    answers = {}
    for length in (4094, 4095, 6000, 7998, 7999, 8191, 9000, 30_000):
        conn = connection(stack, "127.0.0.6")
        resp = raw_get(conn, padded_target(length), headers={"Referer": page_url(stack)})
        conn.close()
        answers[length] = (resp.status, resp.getheader("Content-Type", "").split(";")[0])
        if resp.status != 200:
            assert json.loads(resp.body)["error"]["code"] == "invalid_request"
    # What the gateway can read it answers (a signed config); what nginx refuses, it refuses in the JSON shape.
    assert answers == {
        4094: (200, "application/json"),
        4095: (200, "application/json"),
        6000: (200, "application/json"),
        7998: (200, "application/json"),
        7999: (414, "application/json"),
        8191: (414, "application/json"),
        9000: (414, "application/json"),
        30_000: (414, "application/json"),
    }
    conn = connection(stack, "127.0.0.6")
    resp = raw_get(conn, "/healthz", headers={"X-Big": "b" * 9000})
    conn.close()
    assert resp.status == 400 and json.loads(resp.body)["error"]["code"] == "invalid_request"


def test_gunicorn_reads_every_request_line_nginx_passes_on(stack: Any) -> None:
    """Old code: gunicorn's limit (4094) answered longer lines with its HTML 400 before the app saw them."""
    for length in (4095, 6000, 7998, 8190):
        conn = http.client.HTTPConnection("127.0.0.1", stack.gunicorn_port, timeout=10)
        resp = raw_get(conn, padded_target(length), headers={"Referer": page_url(stack)})
        conn.close()
        assert (resp.status, resp.getheader("Content-Type")) == (200, "application/json"), (length, resp.body[:80])


SECURITY_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy", "X-Frame-Options")


@pytest.mark.parametrize("path", ["/support", "/support/api/corps"])
def test_support_console_sends_each_security_header_once_with_its_own_value(stack: Any, path: str) -> None:
    conn = connection(stack, "127.0.0.7")
    resp = raw_get(conn, path)
    conn.close()
    sent = {name: resp.headers.get_all(name) or [] for name in SECURITY_HEADERS}
    # Old code: each twice, the gateway's then nginx's, and browsers took nginx's weaker Referrer-Policy
    # (strict-origin-when-cross-origin) and X-Frame-Options (SAMEORIGIN) over the console's.
    assert {name: len(values) for name, values in sent.items()} == dict.fromkeys(SECURITY_HEADERS, 1), sent
    assert sent["Referrer-Policy"] == ["same-origin"] and sent["X-Frame-Options"] == ["DENY"]
    assert "frame-ancestors 'none'" in sent["Content-Security-Policy"][0]
    assert resp.headers.get_all("Strict-Transport-Security") == ["max-age=86400"]


def test_the_page_gets_nginxs_security_headers_once(stack: Any) -> None:
    conn = connection(stack, "127.0.0.7")
    resp = raw_get(conn, page_url(stack).split("#")[0].removeprefix(stack.public_url))
    conn.close()
    assert {name: resp.headers.get_all(name) for name in SECURITY_HEADERS} == {
        "Content-Security-Policy": [
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
        ],
        "X-Content-Type-Options": ["nosniff"],
        "Referrer-Policy": ["strict-origin-when-cross-origin"],
        "X-Frame-Options": ["SAMEORIGIN"],
    }


def test_access_logs_keep_no_auth_code_ticket_or_token_from_page_urls(stack: Any, https: requests.Session) -> None:
    page = f"{stack.public_url}/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&code=AUTHCODE77&x=1"
    resp = https.get(
        f"{stack.public_url}/channel/config",
        params={"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": page, "ticket": "TICKET77"},
        headers={"Referer": page + "&access_token=TOKEN77"},
    )
    assert resp.status_code == 200, resp.text
    rid = resp.headers["X-Request-Id"]
    [line] = access_log_lines(stack, f"rid={rid}")
    [nginx_line] = access_log_lines(stack, f"rid={rid}", stack.workdir / "logs" / "access.log")
    # Old code: all three values in gunicorn's line (3 of 3), two in nginx's.
    leaked = [s for s in ("AUTHCODE77", "TICKET77", "TOKEN77") if s in line or s in nginx_line]
    assert leaked == [], (line, nginx_line)
    assert "code%3D***" in line and "ticket=***" in line and "access_token=***" in line  # still there, masked
    assert '"GET /channel/config HTTP/1.1"' in nginx_line  # nginx logs the path only; gunicorn the rest


@pytest.fixture(scope="module")
def callback_corp(stack: Any, redis_url: str) -> str:
    """A corp with a callback registered in the stack's store (the sandbox's demo corp has none)."""
    from app import create_app
    from corp.registry import Corp
    from gateway.config import SANDBOX_SECRET_KEY
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN
    from web.runtime import get_runtime

    app = create_app(
        {"REDIS_URL": redis_url, "GATEWAY_SECRET_KEY": SANDBOX_SECRET_KEY, "DINGTALK_API_BASE": stack.api_base}
    )
    corp = Corp(
        corpid="dingpush0001",
        agent_id="1",
        origins=(stack.public_url,),
        corp_secret="c",
        channel_secret="c",
        callback_token=CALLBACK_TOKEN,
        aes_key=AES_KEY,
    )
    get_runtime(app).registry.add(corp)
    get_runtime(app).close()
    return corp.corpid


def test_large_pushes_get_through_nginx_and_gunicorn(stack: Any, https: requests.Session, callback_corp: str) -> None:
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, Sender, many_users, push_body

    sender = Sender(CALLBACK_TOKEN, AES_KEY, callback_corp)
    url = f"{stack.public_url}/ding/callback/{callback_corp}"
    sizes = {}
    for name, event in (
        ("600 leavers", many_users(600)),
        ("31,000 joiners", many_users(31_000, kind="user_add_org")),
        ("33,500 joiners", many_users(33_500, kind="user_add_org")),
    ):
        query, body = push_body(sender, event)
        resp = https.post(url, params=query, data=body, headers={"Content-Type": "application/json"}, timeout=30)
        sizes[name] = (len(body) // 1024, resp.status_code)
        if resp.status_code == 200:
            assert sender.check_reply(resp.json()) == "success"
        else:
            assert resp.json()["error"]["code"] == "invalid_request"
    # Old code: 413 for the first two as well (the app's 16 KiB limit, then nginx's 64k), on every retry.
    assert sizes == {"600 leavers": (18, 200), "31,000 joiners": (968, 200), "33,500 joiners": (1047, 413)}, sizes
