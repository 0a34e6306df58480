"""The failed-login budget (channel/junk.py) and the junk entries of the trace (gateway/trace.py).

Made-up codes from a few addresses must not spend a corp's DingTalk quota nor push real attempts out of the trace:
an address over its budget gets 429 without a call upstream, followers from other addresses are unaffected, and
junk is counted in one trace entry per window.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import trace
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from sandbox.server import SimulatorServer
from sandbox.traffic import run_herd
from tests.helpers import EMPLOYEE, TEST_SECRET_KEY, make_config, register_demo
from web.runtime import get_runtime

API = "channel/user/get_by_code"
LINKED = [p for p in DEMO_PEOPLE if p["userid"]]
JUNKERS = ("203.0.113.1", "203.0.113.2", "203.0.113.3")


def budget_app(sim_server: SimulatorServer, **settings: Any) -> Any:
    from app import create_app

    application = create_app(make_config(sim_server, **settings))
    register_demo(application)
    return application


@pytest.fixture
def japp(sim_server: SimulatorServer) -> Iterator[Any]:
    """A budget of 3 failures per address and 5 per corp (in-process store)."""
    application = budget_app(sim_server, GATEWAY_JUNK_ADDRESS_BUDGET=3, GATEWAY_JUNK_CORP_BUDGET=5)
    yield application
    get_runtime(application).close()


def post_login(app: Any, code: str, address: str) -> Any:
    return app.test_client().post(
        "/channel/login", json={"corpid": DEMO_CORPID, "code": code}, environ_base={"REMOTE_ADDR": address}
    )


def junk() -> str:
    return secrets.token_hex(16)


def real(sim: Any, person: dict[str, Any] = EMPLOYEE) -> str:
    return str(sim.mint_auth_code(DEMO_CORPID, person["unionid"]))


def test_an_address_over_its_budget_gets_429_without_a_call_upstream(japp: Any, sim: Any) -> None:
    for _ in range(3):
        assert post_login(japp, junk(), JUNKERS[0]).status_code == 401
    assert sim.calls(API) == 3
    refused = post_login(japp, real(sim), JUNKERS[0])  # even a real code: the address has spent its budget
    assert refused.status_code == 429 and refused.get_json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 600
    assert "invalid codes" in refused.get_json()["error"]["hint"]
    assert sim.calls(API) == 3  # not asked
    # Real followers from other addresses are unaffected.
    assert post_login(japp, real(sim), "198.51.100.7").status_code == 200


def test_the_corp_budget_stops_addresses_that_failed_before_but_never_a_new_one(japp: Any, sim: Any) -> None:
    """5 failures for the corp: past them an address that failed before is refused though under its own budget
    (many addresses with a few junk codes each), while an address that never failed still signs in."""
    for address in JUNKERS[:2]:
        for _ in range(2):
            assert post_login(japp, junk(), address).status_code == 401
    assert post_login(japp, junk(), JUNKERS[2]).status_code == 401  # the corp's fifth failure
    calls = sim.calls(API)
    for address in JUNKERS:
        assert post_login(japp, junk(), address).status_code == 429
    assert sim.calls(API) == calls
    assert post_login(japp, real(sim), "198.51.100.8").status_code == 200
    assert post_login(japp, junk(), "198.51.100.9").status_code == 401  # its first failure is still asked


def test_junk_is_one_trace_entry_per_window_and_real_attempts_stay(sim_server: SimulatorServer, sim: Any) -> None:
    """60 made-up codes from 3 addresses among 5 real logins, with a trace of 10 entries: every real attempt is still
    listed, and the junk is one entry counting 60 attempts by address (no code in it)."""
    app = budget_app(sim_server, GATEWAY_TRACE_LIMIT=10, GATEWAY_JUNK_ADDRESS_BUDGET=10)
    try:
        codes = []
        for i in range(60):
            code = junk()
            codes.append(code)
            post_login(app, code, JUNKERS[i % 3])
            if i % 12 == 0:
                assert post_login(app, real(sim, LINKED[i % len(LINKED)]), f"198.51.100.{i}").status_code == 200
        assert sim.calls(API) == 30 + 5  # each junk address asked DingTalk 10 times, then was refused
        entries = trace.recent(get_runtime(app).store, DEMO_CORPID, count=50)
        assert [e["outcome"] for e in entries if e["kind"] == "login"] == ["linked"] * 5
        [window] = [e for e in entries if e["kind"] == "junk"]
        assert window["count"] == 60 and window["refused"] == 30
        assert window["addresses"] == dict.fromkeys(JUNKERS, 20)
        assert window["errcodes"] == [40078]
        assert not any(code in str(entries) for code in codes)
        # The support API shows it with a hint.
        view = support_trace(app)
        [shown] = [e for e in view["entries"] if e["kind"] == "junk"]
        assert shown["count"] == 60 and shown["addresses"] == dict.fromkeys(JUNKERS, 20)
        assert "合并计数" in shown["hint"]  # counted per window and address, in the console's Chinese
    finally:
        get_runtime(app).close()


def support_trace(app: Any) -> dict[str, Any]:
    from corp.runtime import Runtime
    from support.traces import recent_trace

    rt: Runtime = get_runtime(app)
    return recent_trace(rt, DEMO_CORPID, count=50)


def test_an_unknown_corp_writes_no_budget(japp: Any) -> None:
    resp = japp.test_client().post("/channel/login", json={"corpid": "nosuchcorp", "code": "x"})
    assert resp.status_code == 404
    assert not get_runtime(japp).store.keys("*nosuchcorp*")


def test_budget_off(sim_server: SimulatorServer, sim: Any) -> None:
    app = budget_app(sim_server, GATEWAY_JUNK_ADDRESS_BUDGET=0)
    try:
        assert [post_login(app, junk(), JUNKERS[0]).status_code for _ in range(15)] == [401] * 15
        assert sim.calls(API) == 15
    finally:
        get_runtime(app).close()


@pytest.mark.redis
def test_junk_arriving_at_once_spends_no_more_than_the_budget(
    redis_app: Any, redis_url: str, sim_server: SimulatorServer
) -> None:
    """An address that has failed before sends 48 made-up codes at once from 3 processes: no more of them reach
    DingTalk than its budget has left (each attempt holds budget while it is under way), the rest get 429."""
    sim = sim_server.sim
    assert post_login(redis_app, junk(), JUNKERS[0]).status_code == 401  # one failure: the address is known now
    sim.reset_calls()
    results = run_herd(
        base_url=sim_server.base_url,
        redis_url=redis_url,
        secret_key=TEST_SECRET_KEY,
        corpid=DEMO_CORPID,
        agentid=DEMO_AGENT_ID,
        processes=3,
        threads=16,
        kind="login",
        codes=[junk() for _ in range(48)],
        extra={"_remote_addr": JUNKERS[0]},
    )
    statuses = [r["status"] for r in results]
    assert set(statuses) == {401, 429}
    assert statuses.count(401) == sim.calls(API) <= 9  # the default budget, 10, less the one failure before
