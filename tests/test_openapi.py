"""The v1.0 client (oapi/openapi.py) and a current-generation app's pipelines (oapi/apps.py) against the simulator
and a real Redis: the app token and ticket through the single-flight cache, the v1.0 error model mapped to oapi's
errors, the shared backoff, and topapi getuserinfo."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from kit.sealing import Sealer
from oapi.apps import CurrentAppClient
from oapi.credentials import APP_TICKET, APP_TOKEN, AppTicket, AppToken, CacheSettings, ChannelToken
from oapi.errcodes import classify_v1
from oapi.errors import CodeInvalid, RateLimited, TokenInvalid, UpstreamError, UpstreamUnavailable
from oapi.openapi import OpenApi
from oapi.tokens import Credentials
from oapi.upstream import Upstream
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from tests.helpers import APP_CORPID, APP_KEY, APP_MEMBER, APP_SECRET, TEST_SECRET_KEY, add_internal_app

pytestmark = pytest.mark.redis

BUSY_RETRIES = 2


@dataclass(frozen=True)
class Registration:
    corpid: str = APP_CORPID
    app_key: str = APP_KEY
    app_secret: str = APP_SECRET


@pytest.fixture
def v1(sim_server: SimulatorServer) -> SimulatorServer:
    add_internal_app(sim_server.sim)
    return sim_server


@pytest.fixture
def upstream(v1: SimulatorServer, real_redis: redis.Redis) -> Iterator[Upstream]:
    client = Upstream(v1.base_url, real_redis, timeout=3.0, busy_retries=BUSY_RETRIES)
    yield client
    client.close()


def make_client(
    server: SimulatorServer, upstream: Upstream, store: redis.Redis, app: Registration | None = None
) -> CurrentAppClient:
    credentials = Credentials(store, Sealer(TEST_SECRET_KEY), CacheSettings(jitter=0))
    return CurrentAppClient(app or Registration(), OpenApi(server.base_url, upstream), upstream, credentials)


@pytest.fixture
def client(v1: SimulatorServer, upstream: Upstream, real_redis: redis.Redis) -> CurrentAppClient:
    return make_client(v1, upstream, real_redis)


def test_app_token_is_fetched_once_and_cached(client: CurrentAppClient, sim: Simulator) -> None:
    first = client.app_token.get()
    assert isinstance(first, AppToken)
    assert client.app_token.get().value == first.value
    assert sim.app_controls.calls(APP_TOKEN.api) == 1
    assert first.expires_at - first.fetched_at == 7200


def test_app_ticket_is_fetched_once_with_the_token_in_the_header(
    client: CurrentAppClient, sim: Simulator, real_redis: redis.Redis
) -> None:
    ticket = client.app_ticket.get()
    assert isinstance(ticket, AppTicket)
    assert client.app_ticket.get().value == ticket.value
    assert sim.app_controls.calls(APP_TICKET.api) == 1
    # Their own keys beside the legacy pipelines', holding no secret in the clear.
    keys = set(real_redis.scan_iter("*"))
    assert f"dtgw:v1:{{{APP_CORPID}}}:app:token" in keys and f"dtgw:v1:{{{APP_CORPID}}}:app:ticket" in keys
    assert ticket.value not in str(real_redis.hgetall(f"dtgw:v1:{{{APP_CORPID}}}:app:ticket"))


def test_app_credentials_have_their_own_types() -> None:
    # mypy refuses an AppToken where a ChannelToken belongs; at run time the types are distinct too.
    assert not issubclass(AppToken, ChannelToken) and not issubclass(AppTicket, AppToken)


def test_persistent_invalid_authentication_costs_two_calls(client: CurrentAppClient, sim: Simulator) -> None:
    sim.app_controls.inject(APP_TICKET.api, 400, "InvalidAuthentication", times=5)
    with pytest.raises(TokenInvalid) as caught:
        client.app_ticket.get()
    assert sim.app_controls.calls(APP_TICKET.api) == 2
    assert caught.value.errcode == "InvalidAuthentication"
    assert "refreshed it once" in caught.value.hint


def test_refused_token_is_refreshed_once(client: CurrentAppClient, sim: Simulator) -> None:
    stale = client.app_token.get()
    sim.apps.revoke_app_tokens(APP_KEY)
    assert client.app_ticket.get().value
    assert client.app_token.get().value != stale.value
    assert sim.app_controls.calls(APP_TICKET.api) == 2


def test_qps_limit_trips_the_shared_backoff(v1: SimulatorServer, upstream: Upstream, sim: Simulator) -> None:
    openapi = OpenApi(v1.base_url, upstream)
    sim.app_controls.set_qps_limit(APP_TOKEN.api, 1)
    CurrentAppClient.fetch_token(openapi, APP_CORPID, APP_KEY, APP_SECRET)
    with pytest.raises(RateLimited) as caught:
        CurrentAppClient.fetch_token(openapi, APP_CORPID, APP_KEY, APP_SECRET)
    assert caught.value.errcode == "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
    assert caught.value.retry_after == 1
    # While the window lasts, no worker's call reaches DingTalk (the window is in the store).
    other_worker = OpenApi(v1.base_url, upstream)
    with pytest.raises(RateLimited):
        CurrentAppClient.fetch_token(other_worker, APP_CORPID, APP_KEY, APP_SECRET)
    assert sim.app_controls.calls(APP_TOKEN.api) == 2
    assert upstream.backoff.active(APP_CORPID) == {f"{APP_KEY}:{APP_TOKEN.api}": 1}


def test_wrong_app_secret_is_a_remembered_configuration_error(
    v1: SimulatorServer, upstream: Upstream, real_redis: redis.Redis, sim: Simulator
) -> None:
    client = make_client(v1, upstream, real_redis, Registration(app_secret="wrong"))
    for _ in range(2):
        with pytest.raises(UpstreamError) as caught:
            client.app_token.get()
        assert type(caught.value) is UpstreamError
        assert caught.value.errcode == "invalidClientIdOrSecret"
        assert "appKey/appSecret" in caught.value.hint
    assert sim.app_controls.calls(APP_TOKEN.api) == 1  # the second was answered from the remembered failure


@pytest.mark.parametrize(("times", "succeeds"), [(BUSY_RETRIES, True), (BUSY_RETRIES + 5, False)])
def test_system_busy_is_retried_a_bounded_number_of_times(
    client: CurrentAppClient, sim: Simulator, times: int, succeeds: bool
) -> None:
    sim.app_controls.inject(APP_TOKEN.api, 429, "systemBusy", times=times)
    if succeeds:
        assert client.app_token.get().value
    else:
        with pytest.raises(UpstreamUnavailable) as caught:
            client.app_token.get()
        assert caught.value.errcode == "systemBusy"
    assert sim.app_controls.calls(APP_TOKEN.api) == BUSY_RETRIES + 1


def test_server_error_of_a_credential_fetch_is_retried(client: CurrentAppClient, sim: Simulator) -> None:
    sim.app_controls.inject(APP_TICKET.api, 500, "systemError")
    assert client.app_ticket.get().value
    assert sim.app_controls.calls(APP_TICKET.api) == 2


@pytest.mark.parametrize(
    "code", ["Forbidden.AccessDenied.IpNotInWhiteList", "Forbidden.AccessDenied.AccessTokenPermissionDenied"]
)
def test_configuration_errors_carry_a_hint(client: CurrentAppClient, sim: Simulator, code: str) -> None:
    sim.app_controls.inject(APP_TOKEN.api, 403, code)
    with pytest.raises(UpstreamError) as caught:
        client.app_token.get()
    assert caught.value.errcode == code and "developer console" in caught.value.hint


def test_user_for_code(client: CurrentAppClient, sim: Simulator) -> None:
    code = sim.apps.mint_app_code(APP_CORPID, APP_KEY, APP_MEMBER["userid"])
    user = client.user_for_code(code)
    assert (user.userid, user.unionid, user.associated_unionid, user.name) == (
        APP_MEMBER["userid"],
        APP_MEMBER["unionid"],
        APP_MEMBER["associated_unionid"],
        APP_MEMBER["name"],
    )
    with pytest.raises(CodeInvalid):
        client.user_for_code(code)


def test_user_for_code_refreshes_a_refused_token_once(client: CurrentAppClient, sim: Simulator) -> None:
    client.app_token.get()
    sim.apps.revoke_app_tokens(APP_KEY)
    code = sim.apps.mint_app_code(APP_CORPID, APP_KEY, APP_MEMBER["userid"])
    assert client.user_for_code(code).userid == APP_MEMBER["userid"]
    assert sim.app_controls.calls("topapi/v2/user/getuserinfo") == 2


def test_persistent_topapi_token_refusal_costs_two_calls(client: CurrentAppClient, sim: Simulator) -> None:
    """errcode 88 with sub_code 40014 (topapi's "token invalid"): refresh once, retry once, then a clean error."""
    sim.app_controls.inject_topapi("topapi/v2/user/getuserinfo", 88, sub_code="40014", times=5)
    code = sim.apps.mint_app_code(APP_CORPID, APP_KEY, APP_MEMBER["userid"])
    with pytest.raises(TokenInvalid):
        client.user_for_code(code)
    assert sim.app_controls.calls("topapi/v2/user/getuserinfo") == 2
    assert sim.app_controls.calls(APP_TOKEN.api) == 2  # the first token, and the one refresh


def test_cold_herd_fetches_token_and_ticket_once(
    v1: SimulatorServer, upstream: Upstream, real_redis: redis.Redis, sim: Simulator
) -> None:
    workers = 24
    # Slow answers: every worker arrives while the one fetch is still under way.
    sim.app_controls.set_latency(APP_TOKEN.api, 0.3)
    sim.app_controls.set_latency(APP_TICKET.api, 0.3)
    clients = [make_client(v1, upstream, real_redis) for _ in range(workers)]
    start = threading.Barrier(workers)
    tickets: list[str] = []
    errors: list[BaseException] = []

    def worker(client: CurrentAppClient) -> None:
        start.wait()
        try:
            tickets.append(client.app_ticket.get().value)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(tickets) == workers and len(set(tickets)) == 1
    assert sim.app_controls.calls(APP_TOKEN.api) == 1
    assert sim.app_controls.calls(APP_TICKET.api) == 1


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "InvalidAuthentication", TokenInvalid),
        (403, "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi", RateLimited),
        (403, "Forbidden.AccessDenied.QpsLimitForApi", RateLimited),
        (403, "Forbidden.AccessDenied.QpmLimitForAppkeyAndApi", RateLimited),
        (429, "systemBusy", UpstreamUnavailable),
        (429, "system.busy", UpstreamUnavailable),
        (500, "systemError", UpstreamUnavailable),
        (400, "invalidClientIdOrSecret", UpstreamError),
        (403, "Forbidden.AccessDenied.IpNotInWhiteList", UpstreamError),
        (403, "Forbidden.AccessDenied.AccessTokenPermissionDenied", UpstreamError),
        (403, "Forbidden.AccessDenied.ApiCountLimitForOrg", UpstreamError),
        (400, "SomethingNew", UpstreamError),
    ],
)
def test_classify_v1(status: int, code: str, kind: type[Exception]) -> None:
    error = classify_v1("v1.0/x", status, {"code": code, "message": "m", "requestid": "r"}, token_fetch=False)
    assert type(error) is kind
    assert error.errcode == code and error.errmsg == "m"
    assert classify_v1("v1.0/x", 200, {"accessToken": "t"}, token_fetch=False) is None


def test_answer_without_a_v1_code_is_unavailable_not_an_ip_block(v1: SimulatorServer, upstream: Upstream) -> None:
    # A misdirected DINGTALK_OPENAPI_BASE: the server answers 404 without a v1.0 code.
    openapi = OpenApi(f"{v1.base_url}/not-dingtalk", upstream)
    with pytest.raises(UpstreamUnavailable) as caught:
        CurrentAppClient.fetch_token(openapi, APP_CORPID, APP_KEY, APP_SECRET)
    assert not isinstance(caught.value, RateLimited)
    assert "HTTP 404" in caught.value.message
    assert upstream.backoff.active(APP_CORPID) == {}


@pytest.mark.parametrize("html", [False, True], ids=["status-1111", "html-page"])
def test_the_egress_ip_block_on_api_dingtalk_com_stops_every_corp(
    v1: SimulatorServer, upstream: Upstream, html: bool
) -> None:
    """§7.1: api.dingtalk.com answers a blocked egress IP as oapi does ({"status":1111} or an HTML page); the
    gateway holds every corp's calls, on both bases, instead of reading it as one app's error."""
    sim = v1.sim
    openapi = OpenApi(v1.base_url, upstream)
    sim.app_controls.inject_ip_block("v1.0/oauth2/accessToken", html=html, wait=30)
    with pytest.raises(RateLimited) as caught:
        CurrentAppClient.fetch_token(openapi, APP_CORPID, APP_KEY, APP_SECRET)
    assert caught.value.errcode == 1111
    assert "egress IP" in caught.value.message
    calls = sim.app_controls.calls("v1.0/oauth2/accessToken")
    # Another corp's call, on the other base, is held back without reaching DingTalk.
    with pytest.raises(RateLimited):
        upstream.call("gettoken", {"corpid": "dingother0001", "corpsecret": "s"}, corpid="dingother0001")
    assert sim.calls("gettoken") == 0
    assert sim.app_controls.calls("v1.0/oauth2/accessToken") == calls
    assert "*ip-block*" in upstream.backoff.active(APP_CORPID)
