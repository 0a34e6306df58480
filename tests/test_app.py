"""The app factory: configuration, the error envelope on every error, health, store selection, sandbox mode."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from app import create_app
from gateway.config import load_config
from kit.sealing import Sealer, SealError, fingerprint
from tests.helpers import make_config


def test_secret_key_is_required_outside_sandbox() -> None:
    with pytest.raises(RuntimeError, match="GATEWAY_SECRET_KEY is required"):
        load_config(env={})
    assert load_config(env={"GATEWAY_SANDBOX": "1"})["GATEWAY_SECRET_KEY"]
    with pytest.raises(RuntimeError, match="GATEWAY_HTTP_TIMEOUT"):
        load_config(env={"GATEWAY_SECRET_KEY": "k", "GATEWAY_HTTP_TIMEOUT": "soon"})


def test_config_from_environment() -> None:
    config = load_config(
        env={
            "GATEWAY_SECRET_KEY": "k",
            "DINGTALK_API_BASE": "http://x/",
            "GATEWAY_TOKEN_MARGIN": "600",
            "GATEWAY_TRUST_PROXY": "true",
        }
    )
    assert config["DINGTALK_API_BASE"] == "http://x"
    assert config["GATEWAY_TOKEN_MARGIN"] == 600 and config["GATEWAY_TRUST_PROXY"] is True
    assert config["REDIS_URL"] is None and config["GATEWAY_ADMIN_TOKEN"] is None


def test_settings_are_typed_frozen_and_one_list() -> None:
    import dataclasses

    from gateway.config import DEFAULTS, Settings, load_settings, setting_name

    assert {f.name for f in dataclasses.fields(Settings)} == {setting_name(n) for n in DEFAULTS}
    settings = load_settings(env={"GATEWAY_SECRET_KEY": "k", "GATEWAY_TICKET_COOLDOWN": "90", "GATEWAY_LOCK_WAIT": "1"})
    assert settings.ticket_cooldown == 90 and isinstance(settings.lock_wait, float) and settings.near_cache is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.ticket_cooldown = 1  # type: ignore[misc]
    assert settings.but(ticket_cooldown=1).ticket_cooldown == 1 and settings.ticket_cooldown == 90


def test_overrides_are_coerced_like_the_environment() -> None:
    from gateway.config import load_settings

    settings = load_settings(
        env={}, overrides={"GATEWAY_SECRET_KEY": "k", "GATEWAY_LOCK_WAIT": "2", "GATEWAY_NEAR_CACHE": "0"}
    )
    assert settings.lock_wait == 2.0 and settings.near_cache is False
    with pytest.raises(RuntimeError, match="GATEWAY_TICKET_COOLDOWN"):
        load_settings(env={}, overrides={"GATEWAY_SECRET_KEY": "k", "GATEWAY_TICKET_COOLDOWN": 1.5})


@pytest.mark.parametrize("seconds", ["0", "-1", "1.6", "5"])
def test_a_replica_wait_the_store_socket_would_cut_short_is_refused(seconds: str) -> None:
    from gateway.config import load_settings

    with pytest.raises(RuntimeError, match="GATEWAY_REPLICA_ACK_TIMEOUT"):
        load_settings(env={"GATEWAY_SECRET_KEY": "k", "GATEWAY_REPLICA_ACK_TIMEOUT": seconds})
    settings = load_settings(env={"GATEWAY_SECRET_KEY": "k", "GATEWAY_REPLICA_ACK_TIMEOUT": "0.5"})
    assert settings.replica_ack_timeout == 0.5


def test_healthz(client: Any) -> None:
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.json["status"] == "ok" and resp.json["store"] == "ok"
    assert resp.json["near_cache"] == "off"  # the in-process store needs none
    assert resp.json["store_mode"] == "in-process"
    assert "in-process" in resp.json["near_cache_info"]["reason"]


def test_a_malformed_redis_url_stops_the_start_and_says_why_without_the_password() -> None:
    from app import create_app

    with pytest.raises(RuntimeError) as refused:
        create_app({"GATEWAY_SECRET_KEY": "k", "REDIS_URL": "redis+sentinel://:hunter2@s1:26379"})
    assert "/SERVICE" in str(refused.value) and "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/no/such/route", 404, "not_found"),
        ("DELETE", "/channel/config", 405, "method_not_allowed"),
        ("PUT", "/channel/login", 405, "method_not_allowed"),
        ("POST", "/healthz", 405, "method_not_allowed"),
    ],
)
def test_every_error_is_the_envelope(client: Any, method: str, path: str, status: int, code: str) -> None:
    resp = client.open(path, method=method)
    assert resp.status_code == status
    err = resp.json["error"]
    assert err["code"] == code and err["message"] and err["hint"] and err["request_id"]
    assert resp.headers["X-Request-Id"] == err["request_id"]


def test_unexpected_exception_is_a_clean_500(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    @app.get("/boom")
    def boom() -> str:
        raise KeyError("internal detail")

    resp = app.test_client().get("/boom", headers={"X-Request-Id": "req-123"})
    assert resp.status_code == 500
    assert resp.json["error"]["code"] == "internal_error" and resp.json["error"]["request_id"] == "req-123"
    assert "internal detail" not in resp.get_data(as_text=True) and "Traceback" not in resp.get_data(as_text=True)
    assert any("req-123" == getattr(r, "request_id", None) for r in caplog.records)


def test_a_query_string_that_is_not_utf8_is_a_400_anywhere(app: Any) -> None:
    """werkzeug raises UnicodeDecodeError from request.args on such bytes: the caller's mistake, not a 500."""
    from flask import request

    @app.get("/reads-args")
    def reads_args() -> str:
        return request.args.get("q", "")

    resp = app.test_client().get("/reads-args", environ_overrides={"QUERY_STRING": "q=\xff"})
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_request"
    assert "UTF-8" in resp.json["error"]["message"] and resp.json["error"]["hint"]


def test_a_decoding_bug_is_still_a_500(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Only a query string that is not UTF-8 is the caller's fault; any other UnicodeDecodeError is ours."""

    @app.get("/decode")
    def decode() -> str:
        return b"\xff".decode()

    resp = app.test_client().get("/decode?fine=1")
    assert resp.status_code == 500 and resp.json["error"]["code"] == "internal_error"
    assert any(r.exc_info for r in caplog.records)


def test_bad_request_id_is_replaced(client: Any) -> None:
    resp = client.get("/healthz", headers={"X-Request-Id": "bad id <script>"})
    assert resp.headers["X-Request-Id"] != "bad id <script>" and len(resp.headers["X-Request-Id"]) == 32


def test_in_process_store_warns(sim_server: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    create_app(make_config(sim_server))
    assert any("REDIS_URL is not set" in r.getMessage() and "several workers" in r.getMessage() for r in caplog.records)


@pytest.mark.redis
def test_real_redis_is_used_when_configured(redis_app: Any, real_redis: Any) -> None:
    client = redis_app.test_client()
    assert client.get("/healthz").status_code == 200
    assert real_redis.exists("dtgw:v1:{dingdemo0001}:corp")
    deadline = time.monotonic() + 3
    while client.get("/healthz").json["near_cache"] != "live":
        assert time.monotonic() < deadline, "near cache did not go live"
        time.sleep(0.02)
    # Its invalidation channel is lost: reported until it is back. Each loss doubles the reconnect backoff, so
    # killing it until healthz has seen the gap works however slowly a loaded machine answers /healthz.
    deadline = time.monotonic() + 10
    while True:
        real_redis.client_kill_filter(_type="pubsub")
        if client.get("/healthz").json["near_cache"] == "connecting":
            break
        assert time.monotonic() < deadline, "near cache never reported connecting"
    deadline = time.monotonic() + 10  # and then it reconnects by itself (backoff at most a few seconds)
    while client.get("/healthz").json["near_cache"] != "live":
        assert time.monotonic() < deadline, "near cache never came back live"
        time.sleep(0.02)


def test_sandbox_mode_runs_everything_in_one_process() -> None:
    app = create_app(
        {
            "GATEWAY_SANDBOX": True,
            "REDIS_URL": None,
            "GATEWAY_SECRET_KEY": None,
            "DINGTALK_API_BASE": "https://oapi.dingtalk.com",
        }
    )
    client = app.test_client()
    assert client.get("/healthz").json["sandbox"] is True
    people = client.get("/sandbox/people").json
    assert people["corpid"] == "dingdemo0001" and len(people["people"]) == 3
    assert app.config["DINGTALK_API_BASE"].startswith("http://127.0.0.1:")  # never the real DingTalk
    page = "http://127.0.0.1:5000/channel/login?corpid=dingdemo0001&agentid=1000001"
    cfg = client.get("/channel/config", query_string={"corpid": "dingdemo0001", "agentid": "1000001", "url": page}).json
    verdict = client.post("/sandbox/client/check_config", json={**cfg, "url": page}).json
    assert verdict == {"ok": True}
    unionid = people["people"][0]["unionid"]
    code = client.post("/sandbox/client/auth_code", json={"corpid": "dingdemo0001", "unionid": unionid}).json["code"]
    login = client.post("/channel/login", json={"corpid": "dingdemo0001", "code": code})
    assert login.status_code == 200 and login.json["userid"] == "manager0001"


def test_sandbox_routes_absent_outside_sandbox(client: Any) -> None:
    assert client.get("/sandbox/people").status_code == 404


def test_proxy_headers_trusted_only_when_configured(sim_server: Any) -> None:
    from tests.helpers import register_demo

    headers = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "h5.example.com",
        "X-Forwarded-For": "198.51.100.7",
        "Referer": "https://h5.example.com/p",
    }
    trusted = create_app(make_config(sim_server, GATEWAY_TRUST_PROXY=True))
    register_demo(trusted)
    plain = create_app(make_config(sim_server))
    register_demo(plain)
    for app in (trusted, plain):

        @app.get("/whoami")
        def whoami() -> dict[str, str]:
            from flask import request

            return {"url": request.url, "remote": str(request.remote_addr)}

    assert trusted.test_client().get("/whoami", headers=headers).json == {
        "url": "https://h5.example.com/whoami",
        "remote": "198.51.100.7",
    }
    assert plain.test_client().get("/whoami", headers=headers).json["url"] == "http://localhost/whoami"


def test_sealing_binds_place_and_key() -> None:
    sealer = Sealer("key-one")
    sealed = sealer.seal("secret", "corp:a:corp_secret")
    assert "secret" not in sealed and sealer.open(sealed, "corp:a:corp_secret") == "secret"
    assert sealer.seal("secret", "x") != sealer.seal("secret", "x")  # fresh nonce each time
    with pytest.raises(SealError):
        sealer.open(sealed, "corp:b:corp_secret")
    with pytest.raises(SealError):
        Sealer("key-two").open(sealed, "corp:a:corp_secret")
    for bad in ("", "v1.", "v1.!!!", "plain", sealed[:-4]):
        with pytest.raises(SealError):
            sealer.open(bad, "corp:a:corp_secret")
    assert fingerprint("abc") == fingerprint("abc") != fingerprint("abd") and len(fingerprint("abc")) == 10


def test_metrics_count_and_time_requests_by_route(client: Any) -> None:
    import re

    def count(endpoint: str, status: str, text: str) -> float:
        pattern = rf'^dtgw_http_requests_total\{{endpoint="{endpoint}",method="GET",status="{status}"\}} (\S+)$'
        found = re.findall(pattern, text, re.M)
        return float(found[0]) if found else 0.0

    before = client.get("/metrics").get_data(as_text=True)
    client.get("/healthz")
    client.get("/healthz")
    client.get("/no/such/page/zz-raw-path-label")
    client.get("/channel/config?corpid=nosuchcorp&agentid=1&url=https://h5.example.com/")
    text = client.get("/metrics").get_data(as_text=True)
    assert "# TYPE dtgw_http_requests_total counter" in text
    assert count("healthz", "200", text) - count("healthz", "200", before) == 2
    # Route names, never raw paths: an unknown path is "unmatched", an error keeps its route.
    assert count("unmatched", "404", text) - count("unmatched", "404", before) == 1
    assert count("channel.config", "404", text) - count("channel.config", "404", before) == 1
    assert "zz-raw-path-label" not in text
    assert re.search(r'^dtgw_http_request_duration_seconds_count\{endpoint="healthz"\} [1-9]', text, re.M)


def test_metrics_content_type_is_prometheus_exactly(client: Any) -> None:
    """One charset parameter, not prometheus_client's type with Flask's charset appended again."""
    from prometheus_client import CONTENT_TYPE_LATEST

    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers.get_all("Content-Type") == [CONTENT_TYPE_LATEST]
    assert CONTENT_TYPE_LATEST.count("charset=") == 1


def test_secrets_sealed_under_another_key_get_a_hint_not_a_500(sim_server: Any) -> None:
    from tests.helpers import register_demo

    old = create_app(make_config(sim_server))
    register_demo(old)
    from web.runtime import get_runtime

    # The same store, read by a deployment whose GATEWAY_SECRET_KEY was changed.
    new = create_app(make_config(sim_server, GATEWAY_SECRET_KEY="a-rotated-key-0123456789"))
    from corp.runtime import build_runtime
    from gateway.config import Settings
    from web.runtime import EXTENSION

    new.extensions[EXTENSION] = build_runtime(Settings.from_config(new.config), get_runtime(old).store)
    resp = new.test_client().get(
        "/channel/config?corpid=dingdemo0001&agentid=1000001&url=https%3A%2F%2Fh5.example.com%2F"
    )
    assert resp.status_code == 500
    assert resp.json["error"]["code"] == "internal_error"
    assert "GATEWAY_SECRET_KEY" in resp.json["error"]["hint"]
