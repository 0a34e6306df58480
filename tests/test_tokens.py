"""The credential cache: keys, TTLs, single flight, compare-and-delete, refusals, backoff (fakeredis + simulator)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import Any
from urllib.parse import quote

import pytest

import oapi.tokens
from oapi.credentials import CacheSettings, ChannelToken, Fetch
from oapi.errors import LockTimeout, UpstreamUnavailable
from oapi.tokens import CredentialCache, Credentials
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from tests.helpers import EMPLOYEE, EXTERNAL, ORIGIN, in_background
from web.runtime import get_runtime

CFG = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote(ORIGIN + '/')}"


@pytest.fixture(params=["fakeredis", pytest.param("redis", marks=pytest.mark.redis)])
def app(request: pytest.FixtureRequest, sim_server: Any) -> Iterator[Any]:
    """Every test here runs twice: on the in-process store and on a real redis-server."""
    from app import create_app
    from tests.helpers import make_config, register_demo

    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        request.getfixturevalue("real_redis")  # flushed before and after
    application = create_app(make_config(sim_server, REDIS_URL=url))
    register_demo(application)
    yield application
    get_runtime(application).close()


def clients(app: Any) -> tuple[Any, Any, Any]:
    rt = get_runtime(app)
    corp = rt.corp(DEMO_CORPID)
    return rt, rt.channel_client(corp), rt.corp_client(corp)


def login(client: Any, sim: Any) -> Any:
    return client.post(
        "/channel/login", json={"corpid": DEMO_CORPID, "code": sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])}
    )


def credential_cache(
    rt: Any, corpid: str, pipeline: str, fetch: Fetch, *, fetch_invalidates: bool = False, **settings: Any
) -> CredentialCache[ChannelToken]:
    """A cache of its own on the app's store, as another worker builds it (no near cache, no registration check):
    no jitter, a 300 s margin, and `settings` for the rest (lock_wait, lock_ttl ...)."""
    credentials = Credentials(rt.store, rt.sealer, CacheSettings(**{"margin": 300, "jitter": 0, **settings}))
    return credentials.cache(corpid, pipeline, ChannelToken, fetch, fetch_invalidates=fetch_invalidates)


def frozen_holder(
    app: Any,
    monkeypatch: pytest.MonkeyPatch,
    corpid: str,
    pipeline: str,
    values: list[str],
    *,
    fetch_invalidates: bool = False,
    catch: type[BaseException] | tuple[type[BaseException], ...] = (),
) -> tuple[CredentialCache[ChannelToken], threading.Event, Callable[[float], Any]]:
    """A holder frozen past its lock's TTL (GC pause, SIGSTOP) with its fetch sent but not yet carried out.

    The cache's fetches answer `values` in turn (each for 7200 s); the first waits (up to 5 s) until the returned
    gate is set. Its keep-alive is frozen too. Its `get` is started on a thread of its own and left until its lock
    (0.2 s) has expired; the function returned joins it (see tests.helpers.in_background, and `catch` there).
    """
    monkeypatch.setattr(oapi.tokens, "keep_alive", lambda lock, ttl: nullcontext())
    gate = threading.Event()
    answers = iter(values)

    def fetch() -> tuple[str, int | None]:
        value = next(answers)
        if value == values[0]:
            gate.wait(5)
        return value, 7200

    cache = credential_cache(
        get_runtime(app), corpid, pipeline, fetch, fetch_invalidates=fetch_invalidates, lock_wait=3, lock_ttl=0.2
    )
    frozen = in_background(cache.get, catch=catch)
    time.sleep(0.5)  # the frozen holder's lock (0.2 s) has expired
    return cache, gate, frozen


def test_keys_values_and_ttl(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    assert login(client, sim).status_code == 200
    rt, channel, corp = clients(app)
    keys = {channel.token.key, channel.ticket.key, corp.token.key}
    assert keys == {
        f"dtgw:v1:{{{DEMO_CORPID}}}:channel:token",
        f"dtgw:v1:{{{DEMO_CORPID}}}:channel:ticket",
        f"dtgw:v1:{{{DEMO_CORPID}}}:corp:token",
    }
    all_keys = list(rt.store.scan_iter())
    for key in all_keys:
        assert key.startswith("dtgw:v1:")
        assert DEMO_CORP_SECRET not in key and DEMO_CHANNEL_SECRET not in key
        if key not in ("dtgw:v1:corps", "dtgw:v1:signing-keys"):  # the corp index, the key ring: no corp's
            assert f"{{{DEMO_CORPID}}}" in key  # one hash tag per corp: Redis Cluster ready
    for key in keys:
        fields = rt.store.hgetall(key)
        assert set(fields) == {"v", "fp", "exp", "fetched", "gen"}
        assert float(fields["exp"]) - float(fields["fetched"]) == pytest.approx(7200, abs=1)
        # expires_in - margin (300; jitter is 0 in tests); the channel token had no expires_in at all.
        assert 6890 <= rt.store.ttl(key) <= 6900
        assert len(fields["fp"]) == 10
    token = channel.token.peek()
    assert token is not None and isinstance(token, ChannelToken)
    assert rt.store.hget(channel.token.key, "v") != token.value  # sealed at rest


def test_margin_and_jitter_are_configurable(sim_server: Any) -> None:
    from app import create_app
    from tests.helpers import make_config, register_demo

    app = create_app(make_config(sim_server, GATEWAY_TOKEN_MARGIN=1000, GATEWAY_TOKEN_JITTER=100))
    register_demo(app)
    assert app.test_client().get(CFG).status_code == 200
    rt, channel, _ = clients(app)
    assert 6100 <= rt.store.ttl(channel.ticket.key) <= 6200


def test_channel_and_corp_tokens_never_mix(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    assert login(client, sim).status_code == 200
    _, channel, corp = clients(app)
    assert channel.token.peek().value != corp.token.peek().value  # type: ignore[union-attr]
    # The simulator answers 40014 to a token of the other pipeline; none happened, and each fetch came once.
    assert sim.calls("gettoken") == 1 and sim.calls("channel/get_channel_token") == 1


def test_two_corps_are_separate(app: Any, sim: Any) -> None:
    from tests.helpers import register_demo

    sim.add_corp("dingother", corp_secret="other-corp-secret", channel_secret="other-channel-secret", agent_id="7")
    register_demo(
        app, corpid="dingother", agent_id="7", corp_secret="other-corp-secret", channel_secret="other-channel-secret"
    )
    client = app.test_client()
    a = client.get(CFG).json
    b = client.get(f"/channel/config?corpid=dingother&agentid=7&url={quote(ORIGIN + '/')}").json
    rt = get_runtime(app)
    ta = rt.channel_client(rt.corp(DEMO_CORPID)).ticket.peek()
    tb = rt.channel_client(rt.corp("dingother")).ticket.peek()
    assert ta and tb and ta.value != tb.value
    check = {"agentId": DEMO_AGENT_ID, "type": 1, "url": ORIGIN + "/"}
    assert sim.check_config(
        corpId=DEMO_CORPID, timeStamp=a["timeStamp"], nonceStr=a["nonceStr"], signature=a["signature"], **check
    ) == {"ok": True}
    assert sim.check_config(
        corpId="dingother",
        timeStamp=b["timeStamp"],
        nonceStr=b["nonceStr"],
        signature=b["signature"],
        **{**check, "agentId": "7"},
    ) == {"ok": True}
    assert sim.calls("channel/get_channel_token", "dingother") == 1
    assert sim.calls("channel/get_channel_token", DEMO_CORPID) == 1


def test_persistent_invalid_token_costs_exactly_two_calls(client: Any, sim: Any) -> None:
    assert login(client, sim).status_code == 200  # warm the caches
    sim.reset_calls()
    sim.inject("user/getUseridByUnionid", 40014, times=100)
    from web.runtime import get_runtime as _rt

    # Drop the cached mapping so the lookup really happens.
    rt = _rt(client.application)
    for key in rt.store.scan_iter(match="*:link:*"):
        rt.store.delete(key)
    resp = login(client, sim)
    assert resp.status_code == 502
    assert resp.json["error"]["code"] == "upstream_error"
    assert resp.json["error"]["dingtalk"]["errcode"] == 40014
    assert sim.calls("user/getUseridByUnionid") == 2
    assert sim.calls("gettoken") == 1  # one refresh between the two attempts


@pytest.mark.parametrize("errcode", [33001, 40001, 40014, 42001])
def test_invalid_token_refreshes_once_and_succeeds(client: Any, sim: Any, errcode: int) -> None:
    assert client.get(CFG).status_code == 200
    sim.revoke_tokens(DEMO_CORPID, "channel")
    sim.inject("channel/user/get_by_code", errcode, times=1)
    resp = login(client, sim)
    assert resp.status_code == 200, resp.json
    assert sim.calls("channel/get_channel_token") == 2


def test_auth_wrapper_88_dispatches_on_sub_code(client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    sim.inject("channel/user/get_by_code", 88, sub_code=42001, times=1)
    assert login(client, sim).status_code == 200
    assert sim.calls("channel/user/get_by_code") == 2


def test_late_invalidation_keeps_a_newer_token(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    _, channel, _ = clients(app)
    old = channel.token.peek()
    assert old is not None
    # Another worker saw the old token fail, invalidated it and refreshed.
    sim.revoke_tokens(DEMO_CORPID, "channel")
    assert channel.token.invalidate(old) is True
    new = channel.token.get()
    assert new.value != old.value
    # A slow worker now reports the old token as failed: the new one must survive.
    assert channel.token.invalidate(old) is False
    kept = channel.token.peek()
    assert kept is not None and (kept.value, kept.generation) == (new.value, new.generation)


def test_a_fetch_slower_than_the_lock_ttl_is_still_the_only_fetch(app: Any) -> None:
    rt = get_runtime(app)
    fetches: list[float] = []

    def slow_fetch() -> tuple[str, int | None]:
        fetches.append(time.monotonic())
        time.sleep(1.8)  # timeouts and retries can make a real fetch outlast any fixed lock TTL
        return f"ticket-{len(fetches)}", 7200

    # Three TTLs long; renewed every third of the TTL (0.2 s), so a loaded machine has 0.4 s of slack per renewal.
    def cache() -> CredentialCache[ChannelToken]:  # each worker builds its own view; only the store is shared
        return credential_cache(rt, "dingslow", "channel:ticket", slow_fetch, lock_wait=4, lock_ttl=0.6)

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(cache().get().value)) for _ in range(4)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join(15)
    # The lock was renewed while its holder worked, so nobody else fetched (in invalidate mode a second fetch
    # would have killed the first one's ticket).
    assert len(fetches) == 1
    assert results == ["ticket-1"] * 4


def test_late_writer_never_overwrites_a_newer_credential(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    values = ["slow-old-token", "fast-new-token"]
    slow, gate, late = frozen_holder(app, monkeypatch, "dinglate", "channel:token", values)
    fast = slow.get()  # a second refresher takes the lock and stores a newer generation
    assert fast.value == "fast-new-token"
    gate.set()
    slow_result = late(5)
    assert slow.peek().value == "fast-new-token"  # type: ignore[union-attr]
    assert slow_result.value == "fast-new-token"  # the late writer hands out the newer one too


def test_lock_wait_is_bounded(app: Any) -> None:
    rt, channel, _ = clients(app)
    lock = rt.store.lock(channel.ticket.key + ":lock", timeout=30)
    assert lock.acquire(blocking=False)
    started = time.monotonic()
    with pytest.raises(LockTimeout):
        credential_cache(rt, DEMO_CORPID, "channel:ticket", lambda: ("x", 7200), lock_wait=0.5).get()
    assert time.monotonic() - started < 2
    resp = app.test_client().get(CFG)  # through HTTP, with the app's 3 s wait
    assert resp.status_code == 503 and resp.json["error"]["code"] == "upstream_unavailable"
    assert resp.headers["Retry-After"] == "1"
    lock.release()
    assert app.test_client().get(CFG).status_code == 200


@pytest.mark.parametrize("errcode", [40089, 40001, 60020, 60011])
def test_configuration_errors_are_remembered_briefly(app: Any, client: Any, sim: Any, errcode: int) -> None:
    sim.inject("channel/get_channel_token", errcode, times=1, errmsg="访问ip不在白名单之中,request ip=203.0.113.7")
    for _ in range(5):
        resp = client.get(CFG)
        assert resp.status_code == 502
        assert resp.json["error"]["dingtalk"]["errcode"] == errcode
        assert resp.json["error"]["hint"]
    assert sim.calls("channel/get_channel_token") == 1  # not hammered
    _, channel, _ = clients(app)
    assert 25 <= get_runtime(app).store.ttl(channel.token.key + ":fail") <= 30
    # The ticket, fetched with that token, remembers the same failure; both clear by themselves.
    assert get_runtime(app).store.delete(channel.token.key + ":fail", channel.ticket.key + ":fail") == 2
    assert client.get(CFG).status_code == 200


def test_system_busy_is_retried_at_most_three_times(client: Any, sim: Any) -> None:
    sim.inject("channel/get_channel_token", -1, times=2)
    assert client.get(CFG).status_code == 200
    assert sim.calls("channel/get_channel_token") == 3
    sim.reset_calls()
    sim.inject("channel/user/get_by_code", -1, times=1)
    resp = login(client, sim)
    # -1 is an answer, not silence: even the single-use code exchange is retried (should DingTalk have spent the
    # code anyway, the retry answers 40078 and the page asks for a new code; tests/test_upstream_faults.py).
    assert resp.status_code == 200 and sim.calls("channel/user/get_by_code") == 2
    sim.reset_calls()
    sim.inject("user/getUseridByUnionid", -1, times=10)
    code = sim.mint_auth_code(DEMO_CORPID, EXTERNAL["unionid"])  # a follower whose link is not cached yet
    resp = client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    assert resp.status_code == 503 and resp.json["error"]["dingtalk"]["errcode"] == -1
    assert sim.calls("user/getUseridByUnionid") == 4  # the call and three retries


@pytest.mark.parametrize("errcode", [45009, 90002, 90005, 90006, 90018])
def test_rate_limit_opens_a_shared_backoff(app: Any, sim: Any, errcode: int) -> None:
    """Without pacing (GATEWAY_UPSTREAM_RATE=0), a rate limit refuses everyone for a growing window."""
    get_runtime(app).upstream.pacer.rate = 0
    sim.inject("channel/get_channel_token", errcode, times=1)
    first = app.test_client().get(CFG)
    assert first.status_code == 503 and first.json["error"]["dingtalk"]["errcode"] == errcode
    assert int(first.headers["Retry-After"]) >= 1
    # Another client (worker) honours the same window without calling DingTalk.
    second = app.test_client().get(CFG)
    assert second.status_code == 503 and sim.calls("channel/get_channel_token") == 1
    assert get_runtime(app).upstream.backoff.active(DEMO_CORPID) == {"channel/get_channel_token": 1}
    time.sleep(1.1)
    assert app.test_client().get(CFG).status_code == 200


@pytest.mark.parametrize("errcode", [45009, 90018])
def test_a_paced_call_queues_behind_a_rate_limit_instead_of_failing(app: Any, sim: Any, errcode: int) -> None:
    """With pacing (the default), a rate limit that gets through pauses the corp's API briefly; the refused call
    and the callers after it queue behind the pause instead of being refused for the window."""
    sim.inject("channel/get_channel_token", errcode, times=1)
    assert app.test_client().get(CFG).status_code == 200
    assert sim.calls("channel/get_channel_token") == 2  # the refused call, queued once more behind the pause
    sim.inject("channel/user/get_by_code", errcode, times=2)  # refused twice: then the caller is told
    resp = login(app.test_client(), sim)
    assert resp.status_code == 503 and resp.json["error"]["dingtalk"]["errcode"] == errcode
    assert 1 <= int(resp.headers["Retry-After"]) <= 4
    assert sim.calls("channel/user/get_by_code") == 2


def test_backoff_grows_exponentially(app: Any) -> None:
    backoff = get_runtime(app).upstream.backoff
    assert [backoff.trip("c1", "gettoken") for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.trip("c2", "gettoken") == 1  # per corp
    # Paced, it is a short pause the callers queue behind: capped below the pacing's wait.
    assert [backoff.trip("c3", "gettoken", paced=True) for _ in range(5)] == [1, 2, 4, 4, 4]


@pytest.mark.parametrize("kind", ["status1111", "html"])
def test_ip_block_pauses_everything(app: Any, client: Any, sim: Any, kind: str) -> None:
    if kind == "status1111":
        sim.inject("channel/get_channel_token", 0, body={"status": 1111, "wait": 5})
    else:
        sim.inject("channel/get_channel_token", 0, raw="<html>blocked</html>")
    resp = client.get(CFG)
    assert resp.status_code == 503 and resp.json["error"]["code"] == "upstream_unavailable"
    expected = 5 if kind == "status1111" else 300
    assert int(resp.headers["Retry-After"]) == expected
    assert login(client, sim).status_code == 503  # other APIs wait too
    assert sim.calls() == 1


def test_timeouts_become_503(app: Any, client: Any, sim: Any) -> None:
    get_runtime(app).upstream.timeout = 0.3
    sim.set_latency(1.0, "channel/get_channel_token")
    started = time.monotonic()
    resp = client.get(CFG)
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert time.monotonic() - started < 3
    # The simulator counts a call when its (slow) answer is done: wait for the third, then make sure no fourth comes.
    deadline = time.monotonic() + 10
    while sim.calls("channel/get_channel_token") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # longer than one slow answer: a fourth attempt would have been counted by now
    # Read timeouts on an idempotent call are retried by urllib3 (2 retries), no more.
    assert sim.calls("channel/get_channel_token") == 3


def test_unreachable_upstream_is_503(sim_server: Any) -> None:
    from app import create_app
    from sandbox.processes import free_port
    from tests.helpers import make_config, register_demo

    app = create_app(make_config(sim_server, DINGTALK_API_BASE=f"http://127.0.0.1:{free_port()}"))
    register_demo(app)
    resp = app.test_client().get(CFG)
    assert resp.status_code == 503 and resp.json["error"]["code"] == "upstream_unavailable"


def test_fetch_logs_fingerprint_not_credential(app: Any, client: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="oapi.tokens")
    assert client.get(CFG).status_code == 200
    _, channel, _ = clients(app)
    lines = [r.getMessage() for r in caplog.records if r.name == "oapi.tokens"]
    assert any(f"pipeline=channel:token fp={channel.token.peek().fingerprint}" in m for m in lines)  # type: ignore
    assert any("pipeline=channel:ticket" in m for m in lines)
    for m in lines:
        assert channel.token.peek().value not in m and channel.ticket.peek().value not in m  # type: ignore


def test_metrics_count_upstream_calls_and_fetches(client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    assert 'dtgw_upstream_calls_total{api="channel/get_channel_token",errcode="0"}' in text
    assert f'dtgw_credential_fetches_total{{corpid="{DEMO_CORPID}",outcome="ok",pipeline="channel:ticket"}}' in text
    assert 'dtgw_http_requests_total{endpoint="channel.config",method="GET",status="200"}' in text


def test_forced_refresh_cooldown(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    _, channel, _ = clients(app)
    first = channel.ticket.peek()
    fresh = channel.ticket.force_refresh(60)
    assert fresh is not None and fresh.generation > first.generation  # type: ignore[union-attr]
    assert channel.ticket.force_refresh(60) is None
    assert 55 <= channel.ticket.cooldown_left() <= 60
    assert sim.calls("channel/get_channel_jsapi_ticket") == 2


def test_credentials_never_fetched_per_page_view(client: Any, sim: Any) -> None:
    for _ in range(50):
        assert client.get(CFG).status_code == 200
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1 and sim.calls("channel/get_channel_token") == 1


def test_expired_entry_is_refetched(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    rt, channel, _ = clients(app)
    rt.store.delete(channel.ticket.key)  # what Redis does at expires_in - margin
    sim.advance(7300)  # and DingTalk expired both meanwhile
    assert client.get(CFG).status_code == 200
    # The ticket fetch met 42001 with the old token, refreshed the token once and retried once.
    assert sim.calls("channel/get_channel_jsapi_ticket") == 3
    assert sim.calls("channel/get_channel_token") == 2


# -- tickets: a fetch may kill the ticket before it (issue 15; the multi-process cases: test_ticket_faults.py) --


def test_a_ticket_fetch_is_not_resent_after_a_read_timeout(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    channel = clients(app)[1]
    get_runtime(app).upstream.timeout = 0.3
    sim.set_latency(1.0, "channel/get_channel_jsapi_ticket")
    before = sim.calls("channel/get_channel_jsapi_ticket")
    with pytest.raises(UpstreamUnavailable):
        channel.ticket.force_refresh(60)
    time.sleep(1.5)  # the simulator counts a call when its (slow) answer is done
    # A resent fetch could be carried out after the one that answered, and kill the ticket stored from it.
    assert sim.calls("channel/get_channel_jsapi_ticket") - before == 1


def test_a_failed_forced_refresh_drops_the_ticket_and_releases_the_cooldown(app: Any, client: Any, sim: Any) -> None:
    assert client.get(CFG).status_code == 200
    channel = clients(app)[1]
    old = channel.ticket.peek()
    assert old is not None
    get_runtime(app).upstream.timeout = 0.3
    sim.set_latency(1.0, "channel/get_channel_jsapi_ticket")
    with pytest.raises(UpstreamUnavailable):
        channel.ticket.force_refresh(60)
    # Its outcome is unknown: the fetch may yet kill the old ticket, so it is not kept, and the next report may
    # refresh again at once.
    assert channel.ticket.peek() is None
    assert channel.ticket.cooldown_left() == 0
    sim.set_latency(0, "channel/get_channel_jsapi_ticket")
    time.sleep(1.0)
    fresh = channel.ticket.force_refresh(60)
    assert fresh is not None and fresh.value != old.value
    assert 55 <= channel.ticket.cooldown_left() <= 60


def test_a_forced_refresh_holds_its_cooldown_no_longer_than_its_lock_while_it_runs(app: Any) -> None:
    rt = get_runtime(app)
    seen: dict[str, int] = {}

    def fetch() -> tuple[str, int | None]:
        seen["cooldown"] = cache.cooldown_left()
        seen["lock_ms"] = int(rt.store.pttl(cache.key + ":lock"))
        return "ticket", 7200

    cache = rt.credentials.cache(DEMO_CORPID, "channel:ticket", ChannelToken, fetch, fetch_invalidates=True)
    assert cache.force_refresh(60) is not None
    # A worker killed mid-fetch frees both within the (short) lock TTL; a stored ticket starts the full cooldown.
    assert 0 < seen["lock_ms"] <= 3000 and seen["cooldown"] <= 3
    assert 55 <= cache.cooldown_left() <= 60


def test_a_ticket_fetch_that_overlapped_another_keeps_neither(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # DingTalk carries out the frozen holder's fetch only after another worker has fetched and stored: it kills
    # that ticket.
    values = ["frozen-ticket", "successor-ticket", "next-ticket"]
    cache, gate, frozen = frozen_holder(
        app, monkeypatch, "dingfrozen", "channel:ticket", values, fetch_invalidates=True, catch=LockTimeout
    )
    assert cache.get().value == "successor-ticket"
    gate.set()
    # Its caller is told to retry rather than handed a ticket that may be dead.
    assert isinstance(frozen(5), LockTimeout)
    assert cache.peek() is None  # nor is the successor's kept: either fetch may have killed the other's
    assert cache.get().value == "next-ticket"  # the next reader fetches alone
