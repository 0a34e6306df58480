"""Refresh-ahead (oapi/refresh.py) and the concurrent cold login (issue 19): credentials refreshed before they
leave the store by exactly one refresher across every process, no request waiting on a fetch once warm; a cold
legacy login fetching the corp token while its code is exchanged, with the same errors as before.

Everything about locks and several processes runs against a real Redis; properties, never timings.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import channel.login
from gateway import trace
from oapi.errors import UpstreamUnavailable
from oapi.tokens import Meanwhile
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from sandbox.traffic import run_herd, run_steady
from tests.helpers import (
    APP_CORPID,
    APP_KEY,
    APP_MEMBER,
    APP_SECRET,
    EMPLOYEE,
    TEST_SECRET_KEY,
    add_internal_app,
    make_config,
    register_demo,
)
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

LEGACY = ("channel:token", "channel:ticket", "corp:token")
APP = ("app:token", "app:ticket")


def counters(text: str, name: str) -> Counter[tuple[str, ...]]:
    """A counter's values in a /metrics text, by its labels' values in label-name order."""
    found: Counter[tuple[str, ...]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(v for _, v in sorted(sample.labels.items()))] += int(sample.value)
    return found


def waits(text: str) -> Counter[tuple[str, ...]]:
    return counters(text, "dtgw_credential_waits_total")  # (corpid, pipeline)


def refreshes(text: str) -> Counter[tuple[str, ...]]:
    return counters(text, "dtgw_credential_refreshes_total")  # (corpid, path, pipeline)


def register_internal_app(app: Any, sim: Any) -> None:
    from corp.registry import INTERNAL, Corp

    add_internal_app(sim)
    get_runtime(app).registry.add(
        Corp(
            corpid=APP_CORPID,
            kind=INTERNAL,
            agent_id="1",
            origins=("https://h5.example.com",),
            app_key=APP_KEY,
            app_secret=APP_SECRET,
        )
    )


@pytest.fixture
def manual(sim_server: Any, real_redis: Any, redis_url: str) -> Iterator[Any]:
    """The gateway on a real Redis whose refresher never runs a pass by itself (its passes are 10 minutes apart,
    and everything is due: the lead is longer than any lifetime); tests call `run_once()`."""
    from app import create_app

    app = create_app(
        make_config(
            sim_server,
            REDIS_URL=redis_url,
            GATEWAY_REFRESH_AHEAD_EVERY=600,
            GATEWAY_REFRESH_AHEAD_LEAD=7300,
        )
    )
    register_demo(app)
    yield app
    get_runtime(app).close()


def config(app: Any, corpid: str = DEMO_CORPID, agentid: str = DEMO_AGENT_ID) -> Any:
    return app.test_client().get(f"/channel/config?corpid={corpid}&agentid={agentid}&url=https://h5.example.com/")


def login(app: Any, code: str, corpid: str = DEMO_CORPID) -> Any:
    return app.test_client().post("/channel/login", json={"corpid": corpid, "code": code})


def legacy_caches(app: Any) -> dict[str, Any]:
    rt = get_runtime(app)
    corp = rt.corp(DEMO_CORPID)
    channel_client = rt.channel_client(corp)
    return {
        "channel:token": channel_client.token,
        "channel:ticket": channel_client.ticket,
        "corp:token": rt.corp_client(corp).token,
    }


# -- one process: what a pass does -----------------------------------------------------------------------------------


def test_a_pass_refreshes_every_used_credential_once_and_requests_keep_using_them(manual: Any, sim: Any) -> None:
    assert config(manual).status_code == 200
    assert login(manual, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).status_code == 200
    caches = legacy_caches(manual)
    before = {name: cache.peek() for name, cache in caches.items()}
    sim.reset_calls()
    refresher = get_runtime(manual).refresher
    assert refresher is not None and {c.key for c in refresher.watched} == {c.key for c in caches.values()}
    assert refresher.run_once() == 3
    assert sim.calls("channel/get_channel_token") == 1
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1
    assert sim.calls("gettoken") == 1
    for name, cache in caches.items():
        fresh = cache.peek()
        assert fresh is not None and fresh.generation > before[name].generation  # type: ignore[union-attr]
    # Requests use the successors without fetching anything.
    assert config(manual).status_code == 200
    assert sim.calls() == 3
    text = manual.test_client().get("/metrics").get_data(as_text=True)
    assert refreshes(text)[(DEMO_CORPID, "ahead", "channel:ticket")] >= 1


def test_not_due_missing_or_locked_credentials_are_left_alone(manual: Any, sim: Any) -> None:
    assert config(manual).status_code == 200
    cache = legacy_caches(manual)["channel:ticket"]
    rt = get_runtime(manual)
    sim.reset_calls()
    assert cache.refresh_ahead(lead=60) is None  # 6,900 s left in the store: not due
    lock = rt.store.lock(cache.key + ":lock", timeout=30)
    assert lock.acquire(blocking=False)
    assert cache.refresh_ahead(lead=7300) is None  # another worker is at it: skip, do not wait
    lock.release()
    rt.store.delete(cache.key)
    assert cache.refresh_ahead(lead=7300) is None  # missing: left to the request that needs it
    assert sim.calls() == 0


def test_a_refresher_that_gets_the_lock_after_another_stored_the_successor_does_not_fetch(
    manual: Any, sim: Any
) -> None:
    assert config(manual).status_code == 200
    rt = get_runtime(manual)
    token = legacy_caches(manual)["channel:token"]
    rt.store.pexpire(token.key, 5_000)  # as if it had been cached for most of its life
    assert token.refresh_ahead(lead=60) is not None  # the first refresher
    calls = sim.calls("channel/get_channel_token")
    assert token.refresh_ahead(lead=60) is None  # the second one re-reads under the lock: 6,900 s left
    assert sim.calls("channel/get_channel_token") == calls


def test_a_ticket_whose_successor_fetch_failed_is_dropped_a_token_is_kept(manual: Any, sim: Any) -> None:
    assert config(manual).status_code == 200
    assert login(manual, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])).status_code == 200
    caches = legacy_caches(manual)
    # System busy beyond the retries: the ticket fetch's outcome is unknown, so it may have killed the cached one.
    sim.inject("channel/get_channel_jsapi_ticket", -1, times=4)
    with pytest.raises(UpstreamUnavailable):
        caches["channel:ticket"].refresh_ahead(lead=7300)
    assert caches["channel:ticket"].peek() is None
    sim.inject("gettoken", -1, times=4)
    kept = caches["corp:token"].peek()
    with pytest.raises(UpstreamUnavailable):
        caches["corp:token"].refresh_ahead(lead=7300)
    assert caches["corp:token"].peek() == kept  # a failed token fetch killed nothing
    # The refresher itself logs a failure and goes on.
    sim.inject("gettoken", -1, times=4)
    assert get_runtime(manual).refresher.run_once() == 1  # type: ignore[union-attr]


def test_a_credential_nobody_uses_is_no_longer_polled(sim_server: Any, real_redis: Any, redis_url: str) -> None:
    from app import create_app

    app = create_app(
        make_config(
            sim_server,
            REDIS_URL=redis_url,
            GATEWAY_REFRESH_AHEAD_EVERY=600,
            GATEWAY_REFRESH_AHEAD_LEAD=7300,
            GATEWAY_REFRESH_AHEAD_IDLE=0.2,
        )
    )
    register_demo(app)
    try:
        refresher = get_runtime(app).refresher
        assert refresher is not None and refresher.watched == []
        assert config(app).status_code == 200
        assert len(refresher.watched) == 2  # the ticket, and the token its fetch used on the request's thread
        refresher.run_once()
        threading.Event().wait(0.3)  # longer than the idle time, with no request
        calls = sim_server.sim.calls()
        assert refresher.run_once() == 0 and refresher.watched == []
        assert sim_server.sim.calls() == calls
        assert config(app).status_code == 200  # used again: watched again
        assert len(refresher.watched) == 1
    finally:
        get_runtime(app).close()


def test_the_thread_starts_on_first_use_and_stops_on_close(sim_server: Any, real_redis: Any, redis_url: str) -> None:
    from app import create_app

    def refresher_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == "dtgw-refresh-ahead"]

    already = set(refresher_threads())
    app = create_app(make_config(sim_server, REDIS_URL=redis_url))
    register_demo(app)
    assert set(refresher_threads()) == already  # nothing at create_app
    assert config(app).status_code == 200
    started = set(refresher_threads()) - already
    assert len(started) == 1
    refresher = get_runtime(app).refresher
    assert refresher is not None
    # In a forked child the parent's thread is gone: the child's first use starts its own.
    parents_stop = refresher._stop
    refresher._reset_after_fork()
    parents_stop.set()  # this process is the "child" here, and still has the "parent's" thread: stop that one
    assert all(not cache.used for cache in refresher.watched)
    assert config(app).status_code == 200
    assert len(set(refresher_threads()) - already - started) == 1
    get_runtime(app).close()
    for thread in set(refresher_threads()) - already:
        thread.join(5)
        assert not thread.is_alive()


@pytest.mark.parametrize(
    ("overrides", "on"),
    [({}, True), ({"GATEWAY_REFRESH_AHEAD": "0"}, False), ({"REDIS_URL": None}, False)],
)
def test_on_by_default_with_redis(
    sim_server: Any, real_redis: Any, redis_url: str, overrides: dict[str, Any], on: bool
) -> None:
    from app import create_app

    app = create_app(make_config(sim_server, **{"REDIS_URL": redis_url, **overrides}))
    assert (get_runtime(app).refresher is not None) is on
    get_runtime(app).close()


def test_every_must_be_shorter_than_the_lead(sim_server: Any) -> None:
    from app import create_app

    with pytest.raises(RuntimeError, match="GATEWAY_REFRESH_AHEAD_EVERY"):
        create_app(make_config(sim_server, GATEWAY_REFRESH_AHEAD_EVERY=60, GATEWAY_REFRESH_AHEAD_LEAD=60))


# -- several processes: one refresher, no waits ----------------------------------------------------------------------

# Lifetimes compressed by the simulator: each credential lives 8 s, stays in the store 7 s (margin 1 s, no jitter),
# and is due 3 s before it leaves; the refreshers look every 0.2 s. So successive fetches of one credential are at
# least 4 s apart, whoever makes them.
LIFETIME, MARGIN, LEAD, EVERY = 8, 1, 3.0, 0.2
SPACING = LIFETIME - MARGIN - LEAD
PROCESSES, THREADS, WINDOW = 3, 4, 20.0


def test_refreshers_of_several_processes_fetch_each_credential_once_per_period_and_no_request_waits(
    redis_app: Any, redis_url: str, sim_server: Any
) -> None:
    sim = sim_server.sim
    sim.set_lifetime(LIFETIME)
    sim.set_latency(0.02)  # every upstream call takes a while, as DingTalk's do
    register_internal_app(redis_app, sim)
    settings = {
        "DINGTALK_API_BASE": sim_server.base_url,
        "DINGTALK_OPENAPI_BASE": sim_server.base_url,
        "REDIS_URL": redis_url,
        "GATEWAY_SECRET_KEY": TEST_SECRET_KEY,
        "GATEWAY_TOKEN_MARGIN": MARGIN,
        "GATEWAY_TOKEN_JITTER": 0,
        "GATEWAY_REFRESH_AHEAD_LEAD": LEAD,
        "GATEWAY_REFRESH_AHEAD_EVERY": EVERY,
        "GATEWAY_USERID_CACHE_TTL": 1,  # logins keep looking userids up: the corp token stays in use
    }
    steps = [
        {"kind": "config", "corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID},
        {"kind": "login", "corpid": DEMO_CORPID, "unionid": EMPLOYEE["unionid"]},
        {"kind": "config", "corpid": APP_CORPID, "agentid": "1"},
        {"kind": "app_login", "corpid": APP_CORPID, "client_id": APP_KEY, "userid": APP_MEMBER["userid"]},
    ]
    reports = run_steady(
        settings=settings, processes=PROCESSES, threads=THREADS, steps=steps, seconds=WINDOW, pause=0.05
    )
    statuses = Counter(r["status"] for report in reports for r in (*report["warm"], *report["results"]))
    assert set(statuses) == {200}, statuses
    assert sum(len(report["results"]) for report in reports) >= PROCESSES * THREADS * len(steps)

    waited: Counter[tuple[str, ...]] = Counter()
    fetched: Counter[tuple[str, ...]] = Counter()
    fetched_in_all: Counter[tuple[str, ...]] = Counter()
    for report in reports:
        before, after = report["metrics"]
        waited.update(waits(after))
        waited.subtract(waits(before))
        fetched.update(refreshes(after))
        fetched.subtract(refreshes(before))
        fetched_in_all.update(refreshes(after))
    window = max(end for report in reports for end in [report["window"][1]]) - min(
        report["window"][0] for report in reports
    )
    credentials = [(DEMO_CORPID, p) for p in LEGACY] + [(APP_CORPID, p) for p in APP]
    print(
        f"FIGURE refresh-ahead {PROCESSES} processes, {window:.1f} s window, lifetime {LIFETIME} s: "
        f"requests {sum(len(r['results']) for r in reports)}, waits {sum(waited.values())}, fetches "
        + ", ".join(f"{p}={fetched[(c, 'ahead', p)]}+{fetched[(c, 'request', p)]}" for c, p in credentials)
        + f" (ahead+request; at most {int(window // SPACING + 1)} each)"
    )
    # Once warm, no request found a credential missing, and no request fetched one.
    assert +waited == Counter(), +waited
    assert not [k for k, n in fetched.items() if k[1] == "request" and n], fetched
    for corpid, pipeline in credentials:
        ahead = fetched[(corpid, "ahead", pipeline)]
        # Refreshed ahead during the window, and by one refresher at a time: three processes refreshing on their own
        # would fetch about three times as often.
        assert 1 <= ahead <= window // SPACING + 1, (corpid, pipeline, ahead, window)
    # Every fetch DingTalk saw is one the gateway stored (cold start included): none made outside the cache.
    api_of = {
        "channel:token": "channel/get_channel_token",
        "channel:ticket": "channel/get_channel_jsapi_ticket",
        "corp:token": "gettoken",
    }

    # (A refresher may still refresh once between its process's last /metrics read and the process's exit.)
    def seen_is_stored(seen: int, corpid: str, pipeline: str) -> bool:
        stored = sum(n for (c, _, p), n in fetched_in_all.items() if (c, p) == (corpid, pipeline))
        return stored <= seen <= stored + 1

    for pipeline, api in api_of.items():
        assert seen_is_stored(sim.calls(api, DEMO_CORPID), DEMO_CORPID, pipeline), pipeline
    app_calls = sim.app_controls.calls
    assert seen_is_stored(app_calls("v1.0/oauth2/accessToken", APP_KEY), APP_CORPID, "app:token")
    assert seen_is_stored(app_calls("v1.0/oauth2/jsapiTickets", APP_KEY), APP_CORPID, "app:ticket")


# -- the concurrent cold login ---------------------------------------------------------------------------------------


class CodeExchangeGate:
    """The simulator answers get_by_code only once gettoken has been asked (or after 10 s): a login that fetched
    the corp token only after the code exchange would make every code exchange wait in vain."""

    def __init__(self, sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        self.token_asked = threading.Event()
        self.in_vain = 0
        respond = sim.respond

        def gated(api: str, params: Any) -> Any:
            if api == "gettoken":
                self.token_asked.set()
            elif api == "channel/user/get_by_code" and not self.token_asked.wait(10):
                self.in_vain += 1
            return respond(api, params)

        monkeypatch.setattr(sim, "respond", gated)


def test_a_cold_login_fetches_the_corp_token_while_the_code_is_exchanged(
    redis_app: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = CodeExchangeGate(sim, monkeypatch)
    resp = login(redis_app, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"]))
    assert resp.status_code == 200 and resp.json["userid"] == EMPLOYEE["userid"]
    assert gate.in_vain == 0
    assert sim.calls("gettoken") == 1 and sim.calls("channel/user/get_by_code") == 1
    assert not [t for t in threading.enumerate() if t.name == "dtgw-fetch-meanwhile"]


def test_a_cold_herd_of_logins_on_several_processes_fetches_the_corp_token_once_meanwhile(
    redis_app: Any, redis_url: str, sim_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = sim_server.sim
    gate = CodeExchangeGate(sim, monkeypatch)
    sim.set_latency(0.05)
    people = [p["unionid"] for p in DEMO_PEOPLE]
    codes = [sim.mint_auth_code(DEMO_CORPID, people[i % len(people)]) for i in range(4 * 8)]
    results = run_herd(
        base_url=sim_server.base_url,
        redis_url=redis_url,
        secret_key=TEST_SECRET_KEY,
        corpid=DEMO_CORPID,
        agentid=DEMO_AGENT_ID,
        processes=4,
        threads=8,
        kind="login",
        codes=codes,
    )
    assert [r["status"] for r in results] == [200] * len(codes)
    assert gate.in_vain == 0
    assert sim.calls("gettoken") == 1 and sim.calls("channel/get_channel_token") == 1
    assert sim.calls("channel/user/get_by_code") == len(codes)


# Faults on either call of a cold legacy login, and what the login answered before the corp token was fetched
# meanwhile: (injections, the follower whose link may be cached first, status, contract code, errcode, trace step).
FAULTS = [
    ([("channel/user/get_by_code", 40078, 1)], None, 401, "code_invalid", 40078, "exchange_code"),
    ([("channel/user/get_by_code", -1, 4)], None, 503, "upstream_unavailable", -1, "exchange_code"),
    # Twice: with pacing on, a call refused with 90018 queues behind the pause and goes once more (oapi/pacing.py).
    ([("channel/user/get_by_code", 90018, 2)], None, 503, "upstream_unavailable", 90018, "exchange_code"),
    ([("gettoken", 40001, 1)], None, 502, "upstream_error", 40001, "map_userid"),
    ([("gettoken", 60020, 1)], None, 502, "upstream_error", 60020, "map_userid"),
    ([("gettoken", -1, 4)], None, 503, "upstream_unavailable", -1, "map_userid"),
    (
        [("gettoken", 40001, 1), ("channel/user/get_by_code", 40078, 1)],
        None,
        401,
        "code_invalid",
        40078,
        "exchange_code",
    ),
    ([("gettoken", 40001, 1)], "cached", 200, None, None, "done"),  # the link is cached: no corp token needed
]


def attempt(app: Any, sim: Any, faults: list[tuple[str, int, int]], link: str | None) -> tuple[Any, ...]:
    """A cold legacy login (nothing cached for the corp but maybe the follower's link) meeting `faults`."""
    from corp.links import LinkCache
    from oapi.corp import UserLink

    rt = get_runtime(app)
    rt.registry.add(rt.corp(DEMO_CORPID), renew=True)  # drops every token, ticket, link and backoff of the corp
    if link:
        LinkCache(rt.store, DEMO_CORPID, 60).put(EMPLOYEE["unionid"], UserLink(EMPLOYEE["userid"], 0))
    for api, errcode, times in faults:
        sim.inject(api, errcode, times=times, errmsg="访问ip不在白名单之中,request ip=203.0.113.7")
    resp = login(app, sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"]))
    error = resp.get_json().get("error", {})
    assert not [t for t in threading.enumerate() if t.name == "dtgw-fetch-meanwhile"]  # joined, never left behind
    step = trace.recent(rt.store, DEMO_CORPID, count=1)[0]["step"]
    return resp.status_code, error.get("code"), (error.get("dingtalk") or {}).get("errcode"), step


@pytest.mark.parametrize(("faults", "link", "status", "code", "errcode", "step"), FAULTS)
def test_a_failure_of_either_call_gives_the_same_errors_as_before(
    redis_app: Any,
    sim: Any,
    monkeypatch: pytest.MonkeyPatch,
    faults: list[tuple[str, int, int]],
    link: str | None,
    status: int,
    code: str | None,
    errcode: int | None,
    step: str,
) -> None:
    now = attempt(redis_app, sim, faults, link)
    # The same login with the corp token fetched only when the userid lookup needs it (the code before issue 19).
    monkeypatch.setattr(channel.login, "fetched_meanwhile", lambda cache: nullcontext(Meanwhile(cache)))
    before = attempt(redis_app, sim, faults, link)
    assert now == before == (status, code, errcode, step)
