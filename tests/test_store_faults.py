"""A Redis that is up but refuses writes (issue 15, item 5): full (maxmemory, noeviction) or a replica (READONLY).

A real redis-server of this module's own (its configuration is changed), the simulator, the gateway with its near
cache. Expected: every refused write is `store_unavailable` (503, Retry-After), never a 500, and what needs only
reads (a page's config with the ticket cached, a login with the tokens cached) keeps working.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis

from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID
from sandbox.processes import free_port
from sandbox.redis_server import RedisServer
from tests.helpers import CI, EMPLOYEE, EXTERNAL, ORIGIN, make_config, register_demo
from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, LEAVE, Sender
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

PAGE = ORIGIN + "/"
CFG = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote(PAGE)}"
FAULTS = ["oom", "readonly"]


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """A redis-server for this module alone: the tests make it full or a replica."""
    if not shutil.which("redis-server"):
        if CI:
            pytest.fail("CI=true but no redis-server")
        pytest.skip("needs redis-server")
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
def store(server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    client.flushdb()
    yield client
    heal(client)
    client.flushdb()
    client.close()


def break_store(store: redis.Redis, fault: str) -> None:
    if fault == "oom":
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)  # any write now exceeds it
    else:
        # A replica of a primary that is not there: it keeps its data and serves reads, and refuses every write,
        # as a demoted primary does after a failover.
        store.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    with pytest.raises((redis.exceptions.OutOfMemoryError, redis.exceptions.ReadOnlyError)):
        store.set("dtgw:v1:probe", "1")


def heal(store: redis.Redis) -> None:
    store.config_set("maxmemory", 0)
    store.execute_command("REPLICAOF", "NO", "ONE")


def make_app(sim_server: Any, url: str, *, register: bool = True) -> Any:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=url))
    if register:
        register_demo(app, callback_token=CALLBACK_TOKEN, aes_key=AES_KEY)
    return app


def live(app: Any) -> Any:
    """The app, once its near cache listens (so reads go through the near cache's own path)."""
    near = get_runtime(app).near
    deadline = time.monotonic() + 10
    while near.status() != "live":
        assert time.monotonic() < deadline, "near cache never went live"
        time.sleep(0.02)
    return app


@pytest.fixture
def apps(sim_server: Any, server: RedisServer, store: redis.Redis) -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for app in made:
        get_runtime(app).close()


def login(client: Any, sim: Any, person: dict[str, Any] = EMPLOYEE) -> Any:
    code = sim.mint_auth_code(DEMO_CORPID, person["unionid"])
    return client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})


def report_52013(client: Any) -> Any:
    body = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": PAGE, "errorCode": 52013, "errorMessage": "x"}
    return client.post("/channel/config/error", json=body)


def assert_store_unavailable(resp: Any, what: str) -> None:
    body = resp.get_json()
    assert resp.status_code == 503, f"{what}: {resp.status_code} {body}"
    assert body["error"]["code"] == "store_unavailable", f"{what}: {body}"
    assert int(resp.headers["Retry-After"]) >= 1
    assert "Redis" in body["error"]["hint"]


@pytest.mark.parametrize("fault", FAULTS)
def test_reads_keep_working_while_redis_refuses_writes(
    sim_server: Any, server: RedisServer, store: redis.Redis, apps: list[Any], fault: str
) -> None:
    sim = sim_server.sim
    warm = make_app(sim_server, server.url)
    apps.append(warm)
    client = warm.test_client()
    assert client.get(CFG).status_code == 200
    assert login(client, sim).status_code == 200  # tokens, ticket and this follower's link cached
    break_store(store, fault)
    # A worker that has nothing in memory yet (just started, or its near cache was reset): every read goes to Redis.
    fresh = live(make_app(sim_server, server.url, register=False))
    apps.append(fresh)
    configs = Counter(fresh.test_client().get(CFG).status_code for _ in range(16))
    # Before the fix (OOM): 0 of 16, each a 500, because the near cache read the ticket inside MULTI/EXEC.
    assert configs == {200: 16}, f"configs served while Redis is {fault}: {configs[200]}/16 ({configs})"
    # Logins whose tokens are cached need no write: the link and the trace entry are skipped, the person gets in.
    assert login(fresh.test_client(), sim).status_code == 200
    resp = login(fresh.test_client(), sim, EXTERNAL)  # a new link that cannot be cached
    assert resp.status_code == 200 and resp.get_json()["userid"] == EXTERNAL["userid"], resp.get_json()


@pytest.mark.parametrize("fault", FAULTS)
def test_writes_the_request_needs_are_store_unavailable_not_500(
    sim_server: Any, server: RedisServer, store: redis.Redis, apps: list[Any], fault: str
) -> None:
    app = make_app(sim_server, server.url)
    apps.append(app)
    client = app.test_client()
    assert client.get(CFG).status_code == 200
    break_store(store, fault)
    # A page's ticket report must force a refresh (a lock, a cooldown key): that needs a write.
    assert_store_unavailable(report_52013(client), f"config-error report while {fault}")
    # A push must be recorded durably before it is acknowledged: refused, so DingTalk delivers it again later.
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
    assert_store_unavailable(sender.push(client, LEAVE), f"push while {fault}")


@pytest.mark.parametrize("fault", FAULTS)
def test_a_refresh_the_store_cannot_hold_is_store_unavailable(
    sim_server: Any, server: RedisServer, store: redis.Redis, apps: list[Any], fault: str
) -> None:
    sim = sim_server.sim
    app = make_app(sim_server, server.url)  # registered, nothing fetched yet
    apps.append(app)
    client = app.test_client()
    break_store(store, fault)
    for resp in (client.get(CFG), login(client, sim), client.get(CFG, headers={"Origin": ORIGIN})):
        assert_store_unavailable(resp, f"request needing a token refresh while {fault}")
    heal(store)
    # No restart, no manual step: the next requests simply work.
    assert client.get(CFG).status_code == 200 and login(client, sim).status_code == 200


def test_a_redis_error_that_is_a_bug_stays_a_500(
    sim_server: Any, server: RedisServer, store: redis.Redis, apps: list[Any]
) -> None:
    app = make_app(sim_server, server.url)
    apps.append(app)
    client = app.test_client()
    assert client.get(CFG).status_code == 200
    ticket = get_runtime(app).channel_client(get_runtime(app).corp(DEMO_CORPID)).ticket
    store.delete(ticket.key)
    store.set(ticket.key, "not a hash")  # WRONGTYPE on the next read: our bug, not the store's state
    get_runtime(app).near.drop(ticket.key)  # do not wait for the announcement
    resp = client.get(CFG)
    assert resp.status_code == 500 and resp.get_json()["error"]["code"] == "internal_error"
