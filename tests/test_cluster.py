"""The gateway on a Redis Cluster of three primaries (`REDIS_URL=redis+cluster://…`, sandbox/redis_ha.py).

Every key of a corp carries its hash tag, so its locks, scripts and transactions touch one slot; the global keys
(the corp index, the egress-IP block) are one slot per command. The near cache is off on a cluster, and /healthz
says why. The cold herd is the one of tests/test_concurrency.py, on the cluster: exactly one token and one ticket
fetch across 4 processes × 32 threads, and every signature valid.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from corp.events import EventLog
from gateway.store import connect
from kit.keys import corp_key
from oapi.backoff import IP_BLOCK, IP_PROBE, Backoff
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from sandbox.processes import free_port
from sandbox.redis_ha import Cluster
from sandbox.traffic import PAGE, run_herd
from tests.helpers import EMPLOYEE, TEST_SECRET_KEY, corp_add_args, make_config, need_tools, register_demo
from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, LEAVE, Sender
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

PROCESSES, THREADS = 4, 32
CFG = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote(PAGE, safe='')}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    need_tools("redis-server", "redis-cli")
    group = Cluster(tmp_path_factory.mktemp("cluster"), primaries=3)
    try:
        group.start()
        yield group
    finally:
        group.stop()


@pytest.fixture
def store(cluster: Cluster) -> Iterator[Any]:
    """The gateway's own kind of client on the cluster, every primary emptied."""
    client = connect(cluster.url)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()


@pytest.fixture
def cluster_app(sim_server: Any, cluster: Cluster, store: Any) -> Iterator[Any]:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=cluster.url))
    register_demo(app, callback_token=CALLBACK_TOKEN, aes_key=AES_KEY)
    yield app
    get_runtime(app).close()


def herd(sim_server: Any, cluster: Cluster, **kw: Any) -> list[dict[str, Any]]:
    return run_herd(
        base_url=sim_server.base_url,
        redis_url=cluster.url,
        secret_key=TEST_SECRET_KEY,
        corpid=DEMO_CORPID,
        agentid=DEMO_AGENT_ID,
        processes=PROCESSES,
        threads=THREADS,
        **kw,
    )


def test_cold_herd_fetches_each_credential_once_on_a_cluster(
    cluster_app: Any, cluster: Cluster, sim_server: Any
) -> None:
    sim = sim_server.sim
    sim.set_ticket_mode(DEMO_CORPID, "invalidate")
    sim.set_latency(0.05)  # widen the race: every fetch takes 50 ms
    results = herd(sim_server, cluster)
    assert len(results) == PROCESSES * THREADS
    assert [r["status"] for r in results] == [200] * len(results)
    assert sim.calls("channel/get_channel_token") == 1
    assert sim.calls("channel/get_channel_jsapi_ticket") == 1
    bad = [r["body"] for r in results if sim.check_config(**{**r["body"], "url": PAGE}) != {"ok": True}]
    assert not bad, f"{len(bad)} configs with an invalid signature"


def test_cold_herd_of_logins_fetches_each_token_once_on_a_cluster(
    cluster_app: Any, cluster: Cluster, sim_server: Any
) -> None:
    sim = sim_server.sim
    sim.set_latency(0.05)
    people = [p["unionid"] for p in DEMO_PEOPLE]
    codes = [sim.mint_auth_code(DEMO_CORPID, people[i % len(people)]) for i in range(PROCESSES * THREADS)]
    results = herd(sim_server, cluster, kind="login", codes=codes)
    assert [r["status"] for r in results] == [200] * len(results)
    assert sim.calls("gettoken") == 1
    assert sim.calls("channel/get_channel_token") == 1
    linked = {r["body"]["unionid"]: r["body"]["userid"] for r in results}
    assert linked == {p["unionid"]: p["userid"] for p in DEMO_PEOPLE}


def test_pushes_are_recorded_once_and_replays_refused_on_a_cluster(cluster_app: Any, store: Any) -> None:
    client = cluster_app.test_client()
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
    first = sender.push(client, LEAVE)
    assert first.status_code == 200 and sender.check_reply(first.get_json()) == "success"
    again = sender.push(client, dict(reversed(list(LEAVE.items()))))  # DingTalk's redelivery, other key order
    assert again.status_code == 200 and sender.check_reply(again.get_json()) == "success"
    other = sender.push(client, {**LEAVE, "UserId": ["someone-else"]})
    assert other.status_code == 200
    events = EventLog(store, DEMO_CORPID).recent()
    assert [e.ids["UserId"] for e in events] == [LEAVE["UserId"], ["someone-else"]]
    query, body = sender.request(sender.encrypt('{"EventType": "org_remove"}'))
    assert client.post(f"/ding/callback/{DEMO_CORPID}", query_string=query, json=body).status_code == 200
    replay = client.post(f"/ding/callback/{DEMO_CORPID}", query_string=query, json=body)
    assert replay.status_code == 403 and replay.get_json()["error"]["code"] == "signature_invalid"


def test_every_key_of_a_corp_is_in_one_slot_and_global_keys_work_on_a_cluster(
    cluster_app: Any, store: Any, sim_server: Any
) -> None:
    sim = sim_server.sim
    client = cluster_app.test_client()
    assert client.get(CFG).status_code == 200
    for person in DEMO_PEOPLE:
        code = sim.mint_auth_code(DEMO_CORPID, person["unionid"])
        assert client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code}).status_code == 200
    assert Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID).push(client, LEAVE).status_code == 200
    report = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": PAGE, "errorCode": 52013}
    assert client.post("/channel/config/error", json=report).get_json()["ticket_refreshed"] is True
    keys = list(store.scan_iter(count=1000))  # every primary's keys
    corp_keys = [k for k in keys if f"{{{DEMO_CORPID}}}" in k]
    assert len(corp_keys) >= 10
    assert len({key_slot(k.encode()) for k in corp_keys}) == 1
    assert set(keys) - set(corp_keys) == {"dtgw:v1:corps"}
    # The egress-IP block: set, honoured, lifted in one command (its two keys share a slot).
    backoff = Backoff(store)
    assert key_slot(IP_BLOCK.encode()) == key_slot(IP_PROBE.encode())
    backoff.block_ip(30)
    assert "*ip-block*" in backoff.active(DEMO_CORPID)
    assert backoff.lift_ip_block() is True
    assert not store.exists(IP_BLOCK) and not store.exists(IP_PROBE)


def test_corp_cli_replaces_lists_and_removes_on_a_cluster(cluster_app: Any, store: Any) -> None:
    runner = cluster_app.test_cli_runner()
    client = cluster_app.test_client()
    assert client.get(CFG).status_code == 200  # something cached for the corp
    ticket_key = corp_key(DEMO_CORPID, "channel", "ticket")
    assert store.exists(ticket_key)
    replaced = runner.invoke(args=corp_add_args())
    assert replaced.exit_code == 0 and "Replaced" in replaced.output, replaced.output
    assert not store.exists(ticket_key)  # dropped in the corp's one-slot transaction
    listed = runner.invoke(args=["corp", "list"])
    assert listed.exit_code == 0 and DEMO_CORPID in listed.output
    assert client.get(CFG).status_code == 200
    removed = runner.invoke(args=["corp", "remove", DEMO_CORPID])
    assert removed.exit_code == 0, removed.output
    assert [k for k in store.scan_iter(count=1000) if f"{{{DEMO_CORPID}}}" in k] == []
    assert client.get(CFG).status_code == 404


def test_healthz_says_the_near_cache_is_off_on_a_cluster_and_why(cluster_app: Any) -> None:
    body = cluster_app.test_client().get("/healthz").get_json()
    assert body["status"] == "ok" and body["store_mode"] == "cluster"
    assert body["near_cache"] == "off"
    assert "Cluster" in body["near_cache_info"]["reason"]


def test_a_cluster_that_is_down_at_start_is_a_503_not_a_crash(sim_server: Any) -> None:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=f"redis+cluster://127.0.0.1:{free_port()}"))
    client = app.test_client()
    assert client.get("/healthz").status_code == 503
    resp = client.get(CFG)
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "store_unavailable"
    assert resp.headers["Retry-After"]
    code = EMPLOYEE["unionid"]
    assert client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code}).status_code == 503
    get_runtime(app).close()
