"""GET /channel/config, POST /channel/login and POST /channel/config/error, judged by the simulator."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import quote

import jwt
import pytest

from channel.session import verify_token
from gateway import trace
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from tests.helpers import EMPLOYEE, EXTERNAL, ORIGIN, TEST_SECRET_KEY, UNLINKED
from web.runtime import get_runtime

LOCAL = "http://localhost"  # the issuer of tokens signed for Flask's test client (GATEWAY_ISSUER unset)

CFG = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"

PAGE_URLS = [
    f"{ORIGIN}/",
    f"{ORIGIN}/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}",
    f"{ORIGIN}/p?next=https%3A%2F%2Fh5.example.com%2Fhome%3Fa%3D1&b=2",
    f"{ORIGIN}/p?q=a+b&c=%E4%B8%AD",
    f"{ORIGIN}/路径/页面?名=值",
    f"{ORIGIN}:443/explicit-port?x=1",
    f"{ORIGIN}/spa/#/orders/42?tab=2",
    f"{ORIGIN}/p?x=1#",
]


def config_for(client: Any, page: str, *, via: str) -> Any:
    if via == "url":
        return client.get(f"{CFG}&url={quote(page, safe='')}")
    return client.get(CFG, headers={"Referer": page})


@pytest.mark.parametrize("via", ["url", "referer"])
@pytest.mark.parametrize("page", PAGE_URLS)
def test_every_served_config_passes_the_client_check(client: Any, sim: Any, page: str, via: str) -> None:
    if via == "referer" and not page.isascii():
        # HTTP headers are Latin-1: a browser sends such a Referer percent-encoded.
        page = quote(page, safe=":/?#&=%+")
    resp = config_for(client, page, via=via)
    assert resp.status_code == 200, resp.json
    cfg = resp.json
    assert cfg["type"] == 1 and cfg["corpId"] == DEMO_CORPID and cfg["agentId"] == DEMO_AGENT_ID
    assert "#" not in cfg["url"]
    # The served config is exactly dd.config's argument; the client checks it against the page's own href.
    verdict = sim.check_config(**{**cfg, "url": page})
    assert verdict == {"ok": True}


def test_config_nonce_is_fresh_and_ticket_fetched_once(client: Any, sim: Any) -> None:
    configs = [client.get(f"{CFG}&url={quote(ORIGIN + '/')}").json for _ in range(5)]
    assert len({c["nonceStr"] for c in configs}) == 5
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1
    assert sim.calls("channel/get_channel_token") == 1


def test_sha256_corp(app: Any, client: Any, sim: Any) -> None:
    from tests.helpers import register_demo

    register_demo(app, corpid="dingsha256", sign_hash="sha256")
    sim.add_corp(
        "dingsha256",
        corp_secret=DEMO_CORP_SECRET,
        channel_secret=DEMO_CHANNEL_SECRET,
        agent_id=DEMO_AGENT_ID,
        sign_hash="sha256",
    )
    cfg = client.get(f"/channel/config?corpid=dingsha256&agentid={DEMO_AGENT_ID}&url={quote(ORIGIN + '/x')}").json
    assert len(cfg["signature"]) == 64
    assert sim.check_config(
        corpId="dingsha256",
        agentId=DEMO_AGENT_ID,
        timeStamp=cfg["timeStamp"],
        nonceStr=cfg["nonceStr"],
        signature=cfg["signature"],
        type=1,
        url=ORIGIN + "/x",
    ) == {"ok": True}


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        (f"corpid=nope&agentid=1&url={quote(ORIGIN)}", 404, "unknown_corp"),
        (f"corpid={DEMO_CORPID}&agentid=999&url={quote(ORIGIN)}", 400, "agent_mismatch"),
        (
            f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote('https://evil.example.com/')}",
            403,
            "url_not_allowed",
        ),
        (f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote('http://h5.example.com/')}", 403, "url_not_allowed"),
        (
            f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote('https://h5.example.com:8443/')}",
            403,
            "url_not_allowed",
        ),
        (
            f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote('https://h5.example.com.evil.io/')}",
            403,
            "url_not_allowed",
        ),
        (f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url=javascript%3Aalert(1)", 400, "invalid_request"),
        (
            f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url=https%3A%2F%2Fh5.example.com%3A99999%2F",
            400,
            "invalid_request",
        ),
        (f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}", 400, "invalid_request"),
        (f"agentid={DEMO_AGENT_ID}&url={quote(ORIGIN)}", 400, "invalid_request"),
        (f"corpid={DEMO_CORPID}&agentid=abc&url={quote(ORIGIN)}", 400, "invalid_request"),
        (f"corpid=a%7Bb%7D&agentid=1&url={quote(ORIGIN)}", 400, "invalid_request"),
    ],
)
def test_config_refusals(client: Any, sim: Any, query: str, status: int, code: str) -> None:
    resp = client.get(f"/channel/config?{query}")
    assert resp.status_code == status
    assert resp.json["error"]["code"] == code
    assert resp.json["error"]["hint"]
    assert sim.calls("channel/get_channel_jsapi_ticket") == 0  # a refused page costs DingTalk nothing


def test_cache_busters_are_ignored(client: Any) -> None:
    resp = client.get(f"{CFG}&url={quote(ORIGIN + '/')}&_=1700000000000&utm_source=menu")
    assert resp.status_code == 200 and resp.json["url"] == ORIGIN + "/"


def test_cors_only_for_registered_origins(client: Any) -> None:
    ok = client.get(f"{CFG}&url={quote(ORIGIN + '/')}", headers={"Origin": ORIGIN})
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    other = client.get(f"{CFG}&url={quote(ORIGIN + '/')}", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in other.headers
    pre = client.options("/channel/login", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    pre = client.options("/channel/login", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in pre.headers
    # Naming the corp in the preflight's query checks that corp only.
    pre = client.options(f"/channel/config?corpid={DEMO_CORPID}", headers={"Origin": ORIGIN})
    assert pre.headers["Access-Control-Allow-Origin"] == ORIGIN
    pre = client.options("/channel/config?corpid=nosuchcorp", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in pre.headers


def test_cors_grants_on_errors_follow_the_named_corp(client: Any) -> None:
    """An error answer is still readable by the corp's own page (it carries the hint), and only by it."""
    # Named in the query, refused before validation finished (agentid is not a number).
    resp = client.get(f"/channel/config?corpid={DEMO_CORPID}&agentid=abc", headers={"Origin": ORIGIN})
    assert resp.status_code == 400 and resp.headers.getlist("Access-Control-Allow-Origin") == [ORIGIN]
    # Named in the body: a login with a bogus code.
    resp = client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": "bogus"}, headers={"Origin": ORIGIN})
    assert resp.status_code == 401 and resp.headers.getlist("Access-Control-Allow-Origin") == [ORIGIN]
    # Another corp's page, or no corp at all: no grant.
    resp = client.post("/channel/login", json={"corpid": "othercorp", "code": "x"}, headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers
    resp = client.post("/channel/login", data="not json", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in resp.headers
    # A preflight grants once, not once by the view and again by the CORS layer.
    pre = client.options("/channel/login", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert pre.headers.getlist("Access-Control-Allow-Origin") == [ORIGIN]
    assert pre.headers.getlist("Vary") == ["Origin"]
    # Outside the channel API, no CORS at all.
    assert "Vary" not in client.get("/healthz", headers={"Origin": ORIGIN}).headers


def test_config_queries_are_validated_once_per_distinct_query(client: Any) -> None:
    from web.channel import config_query

    config_query.cache_clear()
    url = f"{CFG}&url={quote(ORIGIN + '/')}"
    for _ in range(3):
        assert client.get(url).status_code == 200
    info = config_query.cache_info()
    assert (info.misses, info.hits, info.currsize) == (1, 2, 1)
    # A query that fails validation is refused every time, and never kept.
    for _ in range(2):
        assert client.get("/channel/config?corpid=a%7Bb%7D&agentid=1").status_code == 400
    info = config_query.cache_info()
    assert (info.misses, info.currsize) == (3, 1)
    # A query that passes, for a page that does not (checked per URL, also never kept), is refused every time.
    for _ in range(2):
        assert client.get(f"{CFG}&url=javascript%3Aalert(1)").status_code == 400
    assert config_query.cache_info().currsize == 2


@pytest.mark.parametrize(
    "query",
    [
        "corpid=dingdemo0001&agentid=1000001",
        "corpid=dingdemo0001&corpid=other&agentid=1000001",  # the first value wins, as in request.args
        "corpid=&agentid=",  # blank values are kept (and then refused by validation)
        "url=https%3A%2F%2Fh5.example.com%2Fp%3Fq%3Da%2Bb%26c%3D%25E4&x=a+b",
        "url=https://h5.example.com/%E4%B8%AD?%ff=%fe",  # invalid escapes stay as they were
        "a&b=&=c&&d=1;e=2",
        "%E8%B7%AF=%E5%BE%84",
    ],
)
def test_raw_query_parsing_matches_request_args(app: Any, query: str) -> None:
    from flask import request

    from gateway.validation import parse_query

    with app.test_request_context(f"/channel/config?{query}"):
        assert parse_query(request.environ["QUERY_STRING"]) == request.args.to_dict()


@pytest.mark.parametrize(("method", "path"), [("GET", "/channel/config"), ("OPTIONS", "/channel/config")])
def test_a_query_string_that_is_not_utf8_is_a_400(client: Any, method: str, path: str) -> None:
    # Raw bytes in the request line, which gunicorn passes on as Latin-1: werkzeug's request.args raises on them.
    query = "corpid=\xff\xfe&agentid=1"
    resp = client.open(path, method=method, environ_overrides={"QUERY_STRING": query})
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert resp.json["error"]["code"] == "invalid_request" and "UTF-8" in resp.json["error"]["message"]
    assert resp.json["error"]["hint"]


def test_the_page_link_mangled_beyond_reading_gets_the_friendly_page(client: Any) -> None:
    resp = client.get("/channel/login", environ_overrides={"QUERY_STRING": "corpid=\xff\xfe&agentid=1"})
    assert resp.status_code == 400 and resp.mimetype == "text/html"
    assert 'data-view="problem"' in resp.get_data(as_text=True)


def test_every_channel_answer_varies_with_origin(client: Any, app: Any) -> None:
    """Grant or no grant, the answer depends on Origin, so a cache must key on it (errors included)."""
    from flask import Response

    app.add_url_rule("/channel/varies", "channel.varies", lambda: Response("x", headers={"Vary": "Accept"}))
    for resp in (
        client.get(f"{CFG}&url={quote(ORIGIN + '/')}"),
        client.get(f"{CFG}&url={quote(ORIGIN + '/')}", headers={"Origin": ORIGIN}),
        client.get("/channel/config?corpid=nosuchcorp&agentid=1&url=https://h5.example.com/"),
        client.post("/channel/login", data="not json"),
    ):
        assert resp.headers.getlist("Vary") == ["Origin"], resp.headers

    # A Vary the view already set is extended, not replaced.
    assert client.get("/channel/varies").headers.getlist("Vary") == ["Accept, Origin"]


# -- login ---------------------------------------------------------------------------------------------------


def login(client: Any, code: str, corpid: str = DEMO_CORPID) -> Any:
    return client.post("/channel/login", json={"corpid": corpid, "code": code})


@pytest.mark.parametrize(
    ("person", "userid", "contact_type", "linked"),
    [(EMPLOYEE, "manager0001", 0, True), (EXTERNAL, "ext0001", 1, True), (UNLINKED, None, None, False)],
    ids=["employee", "external-contact", "no-user-record"],
)
def test_login_outcomes(client: Any, sim: Any, person: dict, userid: Any, contact_type: Any, linked: bool) -> None:
    resp = login(client, sim.mint_auth_code(DEMO_CORPID, person["unionid"]))
    assert resp.status_code == 200
    body = resp.json
    assert (body["userid"], body["contact_type"], body["linked"]) == (userid, contact_type, linked)
    assert body["unionid"] == person["unionid"] and body["openid"] == person["openid"]
    claims = verify_token(get_runtime(client.application).keys, body["token"], issuer=LOCAL, corpid=DEMO_CORPID)
    assert claims["sub"] == (userid or f"unionid:{person['unionid']}")
    assert claims["exp"] - claims["iat"] == body["expires_in"] == 7200


def test_token_verifies_with_plain_pyjwt_and_tamper_fails(client: Any, sim: Any) -> None:
    token = login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).json["token"]
    # What the enterprise's system does: take the public key named by the token's kid from the JWKS, verify with
    # PyJWT (tests/test_identity.py does it over HTTP with PyJWKClient).
    jwks = client.get("/.well-known/jwks.json").json
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == kid)).key
    claims = jwt.decode(token, key, algorithms=["ES256"], issuer=LOCAL, audience=DEMO_CORPID)
    assert set(claims) >= {"iss", "aud", "sub", "corpid", "unionid", "openid", "userid", "iat", "exp"}
    assert claims["userid"] == "manager0001" and claims["corpid"] == DEMO_CORPID
    header, payload, sig = token.split(".")
    forged = jwt.utils.base64url_encode(json.dumps({**claims, "userid": "boss"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{forged}.{sig}", key, algorithms=["ES256"], audience=DEMO_CORPID)
    with pytest.raises(jwt.InvalidAlgorithmError):  # no downgrade to a symmetric key
        jwt.decode(token, "a secret", algorithms=["HS256"], audience=DEMO_CORPID)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        ("reused", 401, "code_invalid"),
        ("bogus", 401, "code_invalid"),
        ("unknown_corp", 404, "unknown_corp"),
        ("malformed_json", 400, "invalid_request"),
        ("wrong_content_type", 400, "invalid_request"),
        ("oversized", 413, "invalid_request"),
        ("missing_code", 400, "invalid_request"),
        ("missing_corpid", 400, "invalid_request"),
        ("empty_body", 400, "invalid_request"),
        ("json_array", 400, "invalid_request"),
        ("code_not_string", 400, "invalid_request"),
        ("get_with_json", 200, None),
    ],
)
def test_login_matrix(client: Any, sim: Any, make: str, status: int, code: str | None) -> None:
    url = "/channel/login"
    if make == "reused":
        c = sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
        assert login(client, c).status_code == 200
        resp = login(client, c)
    elif make == "bogus":
        resp = login(client, "not-a-code")
    elif make == "unknown_corp":
        resp = login(client, "x", corpid="nosuchcorp")
    elif make == "malformed_json":
        resp = client.post(url, data="{oops", content_type="application/json")
    elif make == "wrong_content_type":
        resp = client.post(url, data="corpid=x&code=y", content_type="application/x-www-form-urlencoded")
    elif make == "oversized":
        resp = client.post(url, json={"corpid": DEMO_CORPID, "code": "x" * 100_000})
    elif make == "missing_code":
        resp = client.post(url, json={"corpid": DEMO_CORPID})
    elif make == "missing_corpid":
        resp = client.post(url, json={"code": "abc"})
    elif make == "empty_body":
        resp = client.post(url, data="", content_type="application/json")
    elif make == "json_array":
        resp = client.post(url, json=[DEMO_CORPID, "abc"])
    elif make == "code_not_string":
        resp = client.post(url, json={"corpid": DEMO_CORPID, "code": 12345})
    else:
        resp = client.get(url + f"?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}")  # the HTML page
    assert resp.status_code == status, resp.data[:300]
    if code is not None:
        err = resp.json["error"]
        assert err["code"] == code and err["message"] and err["hint"] and err["request_id"]
        assert "Traceback" not in resp.get_data(as_text=True)
    if make == "missing_code":
        assert "code" in resp.json["error"]["message"]
    if make in ("reused", "bogus"):
        assert resp.json["error"]["dingtalk"]["errcode"] == 40078
        assert "new code" in resp.json["error"]["hint"]


@pytest.mark.parametrize("path", ["/channel/login", "/channel/config/error"])
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,  # a depth bomb: RecursionError inside json.loads
        b'{"corpid": "dingdemo0001", "code": "\\ud800"}',  # a lone surrogate: no UTF-8 encoder takes it
        b'{"corpid": "dingdemo0001", "code": "x", "url": "https://h5.example.com/\\udfff", "errorCode": 52013}',
        b'{"\\ud800": 1}',
        b'{"corpid": "dingdemo0001", "code": "\xff\xfe"}',  # not UTF-8 at all
    ],
    ids=["deep", "surrogate-value", "surrogate-url", "surrogate-key", "not-utf8"],
)
def test_hostile_json_is_a_400_not_a_500(client: Any, sim: Any, path: str, body: bytes) -> None:
    resp = client.post(path, data=body, content_type="application/json")
    assert resp.status_code == 400, resp.data[:200]
    assert resp.json["error"]["code"] == "invalid_request"
    assert sim.calls() == 0


def test_returning_follower_costs_one_upstream_call(client: Any, sim: Any) -> None:
    assert login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).status_code == 200
    for _ in range(3):
        sim.reset_calls()
        assert login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).json["userid"] == "manager0001"
        assert sim.calls() == 1
        assert sim.calls("channel/user/get_by_code") == 1


def test_mapping_cache_ends_and_picks_up_a_new_employee(app: Any, sim: Any) -> None:
    rt = get_runtime(app)
    rt.settings = rt.settings.but(userid_cache_ttl=1)
    client = app.test_client()
    assert login(client, sim.mint_auth_code(DEMO_CORPID, UNLINKED["unionid"])).json["linked"] is False
    sim.set_user_record(DEMO_CORPID, UNLINKED["unionid"], "newhire01", 0)
    store = get_runtime(app).store
    for key in store.scan_iter(match="*:link:*"):
        assert 0 < store.ttl(key) <= 1
    import time

    time.sleep(1.2)
    assert login(client, sim.mint_auth_code(DEMO_CORPID, UNLINKED["unionid"])).json["userid"] == "newhire01"


def test_login_with_upstream_trouble_is_clean(client: Any, sim: Any) -> None:
    sim.inject("channel/user/get_by_code", 60011, times=1)
    resp = login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"]))
    assert resp.status_code == 502 and resp.json["error"]["dingtalk"]["errcode"] == 60011
    assert "permission" in resp.json["error"]["hint"]
    sim.inject("channel/user/get_by_code", 90018, times=2)  # once is queued again behind a pause (pacing)
    resp = login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"]))
    assert resp.status_code == 503 and int(resp.headers["Retry-After"]) >= 1


def test_login_trace_never_holds_the_code(app: Any, client: Any, sim: Any) -> None:
    good = sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
    login(client, good)
    login(client, good)
    entries = trace.recent(get_runtime(app).store, DEMO_CORPID)
    assert [e["outcome"] for e in entries] == ["code_invalid", "linked"]
    assert entries[0]["errcodes"] == [40078] and entries[0]["step"] == "exchange_code"
    # A spent or made-up code is counted in the window's junk entry (gateway/trace.py), not listed on its own.
    assert entries[0]["kind"] == "junk" and entries[0]["count"] == 1
    assert entries[1]["request_id"]
    assert good not in json.dumps(entries)
    assert [e["outcome"] for e in trace.recent(get_runtime(app).store, DEMO_CORPID, outcome="linked")] == ["linked"]


# -- page-reported config errors -----------------------------------------------------------------------------


def report(client: Any, code: int) -> Any:
    return client.post(
        "/channel/config/error",
        json={
            "corpid": DEMO_CORPID,
            "agentid": DEMO_AGENT_ID,
            "url": ORIGIN + "/#/x",
            "errorCode": code,
            "errorMessage": "signature check failed",
        },
    )


def test_ticket_errors_force_one_refresh_per_cooldown(app: Any, client: Any, sim: Any) -> None:
    old = client.get(f"{CFG}&url={quote(ORIGIN + '/')}").json
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1
    first = report(client, 52013)
    assert first.status_code == 202 and first.json["ticket_refreshed"] is True
    assert sim.calls("channel/get_channel_jsapi_ticket") == 2
    for code in (52013, 52011, 52013):
        assert report(client, code).json["ticket_refreshed"] is False
    assert sim.calls("channel/get_channel_jsapi_ticket") == 2
    assert report(client, 52019).status_code == 202
    new = client.get(f"{CFG}&url={quote(ORIGIN + '/')}").json
    check = {"corpId": DEMO_CORPID, "agentId": DEMO_AGENT_ID, "type": 1, "url": ORIGIN + "/"}
    # The simulator invalidates old tickets on refetch: the old page config fails, the new one passes.
    assert (
        sim.check_config(**check, timeStamp=old["timeStamp"], nonceStr=old["nonceStr"], signature=old["signature"])[
            "errorCode"
        ]
        == 52013
    )
    assert sim.check_config(
        **check, timeStamp=new["timeStamp"], nonceStr=new["nonceStr"], signature=new["signature"]
    ) == {"ok": True}
    entries = trace.recent(get_runtime(app).store, DEMO_CORPID)
    assert [e["errcodes"] for e in entries] == [[52019], [52013], [52011], [52013], [52013]]
    assert entries[0]["hint"].startswith("dd.config: bad agentId")
    assert entries[-1]["url"] == ORIGIN + "/"


@pytest.mark.parametrize(
    "override",
    [{"agentid": "999"}, {"url": "https://evil.example.com/"}, {"url": None}],
    ids=["agent", "origin", "no-url"],
)
def test_implausible_reports_are_recorded_but_refresh_nothing(client: Any, sim: Any, override: dict) -> None:
    assert client.get(f"{CFG}&url={quote(ORIGIN + '/')}").status_code == 200
    body = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": ORIGIN + "/", "errorCode": 52013, **override}
    resp = client.post("/channel/config/error", json=body)
    assert resp.status_code == 202 and resp.json["ticket_refreshed"] is False
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1


@pytest.mark.parametrize("body", [{"corpid": DEMO_CORPID}, {"corpid": DEMO_CORPID, "errorCode": "abc"}, {}])
def test_config_error_bad_input(client: Any, body: dict) -> None:
    resp = client.post("/channel/config/error", json=body)
    assert resp.status_code == 400 and resp.json["error"]["code"] == "invalid_request"


def test_no_secret_token_ticket_or_code_in_responses_or_logs(
    app: Any, client: Any, sim: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rt = get_runtime(app)
    corp = rt.corp(DEMO_CORPID)
    caches = (rt.channel_client(corp).token, rt.channel_client(corp).ticket, rt.corp_client(corp).token)
    credentials: set[str] = set()

    def collect() -> None:
        credentials.update(c.value for c in (cache.peek() for cache in caches) if c is not None)

    bodies: list[str] = []
    codes: list[str] = []

    def send(resp: Any) -> None:
        bodies.append(resp.get_data(as_text=True))
        bodies.append(str(resp.headers))
        collect()

    for person in (EMPLOYEE, EXTERNAL, UNLINKED):
        c = sim.mint_auth_code(DEMO_CORPID, person["unionid"])
        codes.append(c)
        send(login(client, c))
        send(login(client, c))  # the refused reuse, with DingTalk's errmsg in the envelope
    send(client.get(f"{CFG}&url={quote(ORIGIN + '/')}"))
    send(report(client, 52013))  # a forced ticket refresh: a second ticket
    # Refusals on every pipeline: revoked tokens are refreshed (new values), failures are logged.
    sim.revoke_tokens(DEMO_CORPID)
    for key in rt.store.scan_iter(match="*:link:*"):
        rt.store.delete(key)
    c = sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
    codes.append(c)
    send(login(client, c))
    sim.inject("gettoken", 40001)
    rt.store.delete(caches[2].key)
    for key in rt.store.scan_iter(match="*:link:*"):
        rt.store.delete(key)
    c = sim.mint_auth_code(DEMO_CORPID, EXTERNAL["unionid"])
    codes.append(c)
    send(login(client, c))
    send(client.get("/metrics"))
    assert len(credentials) >= 6  # two of each: before and after the revocation/refresh
    secrets = [DEMO_CORP_SECRET, DEMO_CHANNEL_SECRET, TEST_SECRET_KEY, *codes, *credentials]
    logs = [r.getMessage() for r in caplog.records] + [r.exc_text or "" for r in caplog.records]
    haystack = "\n".join(bodies + logs)
    for secret in secrets:
        assert secret not in haystack


def test_a_login_in_flight_cannot_restore_a_link_a_leave_event_dropped(app: Any) -> None:
    from corp.links import LinkCache
    from oapi.corp import UserLink

    links = LinkCache(get_runtime(app).store, DEMO_CORPID, 3600)
    looked_up = UserLink("manager0001", 0)  # a login looked this up before the event arrived...
    links.drop_users(["manager0001"])  # ...the user_leave_org event drops the links...
    links.put(EMPLOYEE["unionid"], looked_up)  # ...and the login then tries to cache its answer
    assert links.get(EMPLOYEE["unionid"]) is None
    links.put(EXTERNAL["unionid"], UserLink("ext0001", 1))  # other users are cached as usual
    assert links.get(EXTERNAL["unionid"]) == UserLink("ext0001", 1)


def test_config_error_flood_cannot_push_logins_out_of_the_trace(app: Any, client: Any, sim: Any) -> None:
    rt = get_runtime(app)
    rt.settings = rt.settings.but(trace_limit=5)
    assert login(client, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).status_code == 200
    for _ in range(20):
        assert report(client, 52019).status_code == 202
    entries = trace.recent(get_runtime(app).store, DEMO_CORPID, count=100)
    assert [e["kind"] for e in entries] == ["config_error"] * 5 + ["login"]  # newest first, each kind capped
    assert trace.recent(get_runtime(app).store, DEMO_CORPID, outcome="linked")[0]["kind"] == "login"


def test_trace_masks_codes_and_tokens_in_page_urls(app: Any, client: Any) -> None:
    url = ORIGIN + "/p?code=abc123&authCode=zzz&ticket=t1&x=1&next=%2Fhome&名=值#frag"
    client.post(
        "/channel/config/error", json={"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": url, "errorCode": 52013}
    )
    stored = trace.recent(get_runtime(app).store, DEMO_CORPID)[0]["url"]
    assert stored == ORIGIN + "/p?code=***&authCode=***&ticket=***&x=1&next=/home&名=值"  # otherwise as signed
    for secret in ("abc123", "zzz", "t1"):
        assert secret not in json.dumps(trace.recent(get_runtime(app).store, DEMO_CORPID))
