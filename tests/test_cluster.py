"""The gateway on a Redis Cluster of three primaries (`REDIS_URL=redis+cluster://…`, sandbox/redis_ha.py).

Every key of a corp carries its hash tag, so its locks, scripts and transactions touch one slot; the global keys
(the corp index, the egress-IP block) are one slot per command. The near cache tracks every primary (one tracking
connection each), and /healthz says which. The cold herd is the one of tests/test_concurrency.py, on the cluster:
exactly one token and one ticket fetch across 4 processes × 32 threads, and every signature valid.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from corp.events import EventLog
from gateway.store import connect
from kit.keys import corp_key
from kit.nearcache import ClusterNearCache
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
    # Unpaced: 128 code exchanges at once do not fit the pacer's 5 s wait at 18/s, and this is about the tokens.
    results = herd(sim_server, cluster, kind="login", codes=codes, extra={"GATEWAY_UPSTREAM_RATE": 0})
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
    # Global: the corp index and the signing key ring, one hash each (one slot), which a rotation's transaction
    # (WATCH, MULTI) touches alone.
    assert set(keys) - set(corp_keys) == {"dtgw:v1:corps", "dtgw:v1:signing-keys"}
    rotated = cluster_app.test_cli_runner().invoke(args=["keys", "rotate"])
    assert rotated.exit_code == 0 and "stays published" in rotated.output, rotated.output
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


def test_healthz_says_the_near_cache_tracks_every_primary(cluster_app: Any, cluster: Cluster) -> None:
    client = cluster_app.test_client()
    wait_until(lambda: client.get("/healthz").get_json()["near_cache"] == "live", "near cache live")
    body = client.get("/healthz").get_json()
    assert body["status"] == "ok" and body["store_mode"] == "cluster"
    tracked = body["near_cache_info"]["tracking"].split(",")
    assert sorted(tracked) == sorted(f"127.0.0.1:{s.port}" for s in cluster.servers)


def test_healthz_says_why_the_near_cache_is_off(sim_server: Any, cluster: Cluster, store: Any) -> None:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=cluster.url, GATEWAY_NEAR_CACHE=False))
    body = app.test_client().get("/healthz").get_json()
    assert body["near_cache"] == "off" and "GATEWAY_NEAR_CACHE" in body["near_cache_info"]["reason"]
    get_runtime(app).close()


def keys_on_every_node(store: Any) -> dict[str, str]:
    """One gateway key per primary (node name -> key), from corp ids whose hash tags land on each."""
    found: dict[str, str] = {}
    for n in range(1000):
        key = corp_key(f"dingnode{n}", "channel", "ticket")
        found.setdefault(store.get_node_from_key(key).name, key)
        if len(found) == len(store.get_primaries()):
            return found
    raise AssertionError("no key found for some node")


def test_the_near_cache_keeps_values_of_every_node_until_that_node_announces_a_write(
    cluster: Cluster, store: Any
) -> None:
    near = ClusterNearCache(store, "dtgw:v1:", ping_every=0.2, check_every=0.2)
    other = connect(cluster.url)  # another worker
    try:
        near.snapshot()
        wait_until(lambda: near.live, "near cache live")
        keys = keys_on_every_node(store)
        for key in keys.values():
            kept(near, key)
        written: list[str] = []
        for node, key in keys.items():
            other.hset(key, "v", "written by another worker")  # on `node`, which announces it
            written.append(key)
            wait_until(lambda key=key: near.get(key) is None, f"the write on {node} heard")  # type: ignore[misc]
            assert [near.get(k) for k in keys.values() if k not in written] == ["v1"] * (len(keys) - len(written))
        kept(near, written[0])
        other.flushall(target_nodes=RedisCluster.PRIMARIES)
        wait_until(lambda: near.get(written[0]) is None, "the flush heard")
    finally:
        near.close()
        other.close()


def kept(near: Any, key: str, value: str = "v1") -> None:
    snapshot = near.snapshot()
    assert snapshot is not None
    near.put(key, value, ttl_ms=60_000, snapshot=snapshot, read_at=time.monotonic())
    assert near.get(key) == value


def wait_until(condition: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.02)


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


# -- failovers, on a cluster with a replica per primary ----------------------------------------------------------


@pytest.fixture
def cluster_ha(tmp_path: Any) -> Iterator[Cluster]:
    need_tools("redis-server", "redis-cli")
    # 3 s, not less: on a loaded two-core machine a primary can miss pings for a second, and a failover nobody
    # asked for (with the old primary resyncing from its replica) is not what these tests are about.
    group = Cluster(tmp_path / "cluster-ha", primaries=3, replicas=1, node_timeout_ms=3000)
    try:
        group.start()
        yield group
    finally:
        group.stop()


def tracked(app: Any) -> set[int]:
    info = app.test_client().get("/healthz").get_json()["near_cache_info"]
    return {int(name.rpartition(":")[2]) for name in (info["tracking"] or "").split(",") if name}


def is_clean_503(resp: Any) -> bool:
    body = resp.get_json(silent=True) or {}
    return (
        resp.status_code == 503
        and body.get("error", {}).get("code") == "store_unavailable"
        and int(resp.headers.get("Retry-After", "0")) >= 1
    )


class Traffic:
    """Configs on a thread while a failover happens: every answer a 200 or a clean 503."""

    def __init__(self, app: Any) -> None:
        self.client = app.test_client()
        self.statuses: Counter[int] = Counter()
        self.unclean: list[Any] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            resp = self.client.get(CFG)
            self.statuses[resp.status_code] += 1
            if resp.status_code != 200 and not is_clean_503(resp):
                self.unclean.append((resp.status_code, resp.get_json(silent=True)))
            time.sleep(0.01)

    def end(self) -> Counter[int]:
        self.stop.set()
        self.thread.join(10)
        assert not self.unclean, self.unclean[:3]
        return self.statuses


def test_a_killed_primary_is_followed_and_the_near_cache_tracks_its_successor(
    sim_server: Any, cluster_ha: Cluster
) -> None:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=cluster_ha.url))
    register_demo(app)
    client = app.test_client()
    assert client.get(CFG).status_code == 200
    wait_until(lambda: client.get("/healthz").get_json()["near_cache"] == "live", "near cache live")
    rt = get_runtime(app)
    ticket = rt.channel_client(rt.corp(DEMO_CORPID)).ticket
    old = cluster_ha.primary_port_for(ticket.key)
    assert old is not None and old in tracked(app)
    flushes = client.get("/healthz").get_json()["near_cache_info"]["flushes"]
    traffic = Traffic(app)
    try:
        cluster_ha.server(old).kill()
        new = cluster_ha.wait_failover(ticket.key, old)
        wait_until(lambda: new in tracked(app) and old not in tracked(app), "near cache on the new primary")
        other = connect(cluster_ha.url)  # another worker writes on the new primary
        wait_until(lambda: store_takes_writes(other, ticket.key), "writes on the new primary")
        other.close()
        cached = ticket.peek()
        assert cached is not None, f"the ticket is gone with the primary\n{cluster_ha.diagnose()}"
        wait_until(lambda: (ticket.peek() or cached).fingerprint == "written-after", "the new value served")
    finally:
        statuses = traffic.end()
    assert statuses[200] >= 1, statuses
    assert client.get("/healthz").get_json()["near_cache_info"]["flushes"] > flushes
    assert client.get(CFG).status_code == 200
    get_runtime(app).close()


def store_takes_writes(store: Any, key: str) -> bool:
    try:
        return bool(store.hset(key, "fp", "written-after") >= 0)
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
        return False


def test_a_switchover_is_followed_and_no_value_older_than_the_new_primarys_is_served(
    sim_server: Any, cluster_ha: Cluster
) -> None:
    """CLUSTER FAILOVER: the old primary lives on as a replica, so no connection breaks. The cache still serves
    nothing older than what the new primary holds: the demoted primary announces the writes it replicates, and the
    next check of the primaries empties the cache and tracks the new one."""
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=cluster_ha.url))
    register_demo(app)
    client = app.test_client()
    assert client.get(CFG).status_code == 200
    rt = get_runtime(app)
    ticket = rt.channel_client(rt.corp(DEMO_CORPID)).ticket
    wait_until(lambda: rt.near.get(ticket.key) is not None or ticket.peek() is None, "ticket kept in memory")
    old = cluster_ha.primary_port_for(ticket.key)
    assert old is not None
    successor = cluster_ha.replica_ports_of(old)[0]
    traffic = Traffic(app)
    try:
        switcher = redis.Redis(port=successor)
        assert switcher.execute_command("CLUSTER", "FAILOVER")
        switcher.close()
        assert cluster_ha.wait_failover(ticket.key, old) == successor
        other = connect(cluster_ha.url)
        wait_until(lambda: store_takes_writes(other, ticket.key), "writes on the new primary")
        written = time.monotonic()
        other.close()
        wait_until(lambda: (ticket.peek() or ticket).fingerprint == "written-after", "the new value served", 5)
        served_old_for = time.monotonic() - written
        wait_until(lambda: successor in tracked(app) and old not in tracked(app), "near cache on the new primary")
    finally:
        statuses = traffic.end()
    print(f"\nFIGURE switchover: the old value was served up to {served_old_for:.3f} s after the new one was written")
    assert served_old_for < 1.5
    assert statuses[200] >= 1, statuses
    get_runtime(app).close()
