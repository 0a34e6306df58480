"""The gateway on Redis Sentinel (`REDIS_URL=redis+sentinel://…`): a primary, a replica and three sentinels on
loopback ports (sandbox/redis_ha.py), with Sentinel's down-after-milliseconds and failover-timeout set low
(1000 ms / 3000 ms) so a failover takes seconds.

Expected: the gateway follows a failover by itself (no restart); meanwhile every answer is a 200 or a clean 503
`store_unavailable` with Retry-After, never a 500; a push is answered `success` only once a replica has it, so none
that was acknowledged is missing after the primary is lost; and each worker's near cache starts again, empty, on
the new primary.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis

from corp.events import EventLog
from gateway.store import Replication, connect
from kit.keys import corp_key
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from sandbox.redis_ha import Sentinels
from sandbox.traffic import PAGE, run_timed
from tests.helpers import TEST_SECRET_KEY, make_config, need_tools, register_demo
from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, Sender
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

CFG = f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote(PAGE, safe='')}"
RUN, KILL_AT, BACK_WITHIN = 40.0, 10.0, 15.0


@pytest.fixture
def group(tmp_path: Any) -> Iterator[Sentinels]:
    """A fresh primary + replica + three sentinels for one test (the tests kill, demote and freeze them)."""
    need_tools("redis-server", "redis-sentinel")
    sentinels = Sentinels(tmp_path / "sentinel", replicas=1, down_after_ms=1000, failover_timeout_ms=3000)
    try:
        sentinels.start()
        yield sentinels
    finally:
        sentinels.stop()


def make_app(sim_server: Any, group: Sentinels, *, register: bool = True) -> Any:
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=group.url))
    if register:
        register_demo(app, callback_token=CALLBACK_TOKEN, aes_key=AES_KEY)
    return app


@pytest.fixture
def apps() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for app in made:
        get_runtime(app).close()


def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.05)


def healthz(app: Any) -> dict[str, Any]:
    return app.test_client().get("/healthz").get_json()  # type: ignore[no-any-return]


def tracking(app: Any) -> str | None:
    return healthz(app)["near_cache_info"]["tracking"]  # type: ignore[no-any-return]


def is_clean_503(resp: Any) -> bool:
    body = resp.get_json(silent=True) or {}
    return (
        resp.status_code == 503
        and body.get("error", {}).get("code") == "store_unavailable"
        and int(resp.headers.get("Retry-After", "0")) >= 1
    )


class Pusher:
    """DingTalk's side of the pushes during a run: one new event every `pause` seconds, and a push that was not
    answered `success` delivered again later, as DingTalk does."""

    def __init__(self, app: Any, pause: float = 0.05) -> None:
        self.client = app.test_client()
        self.sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
        self.pause = pause
        self.rows: list[dict[str, Any]] = []
        self.acknowledged: set[str] = set()

    def event(self, n: int) -> dict[str, Any]:
        return {"EventType": "user_add_org", "UserId": [f"failover-{n}"], "TimeStamp": "1700000000000"}

    def push(self, n: int) -> bool:
        started = time.time()
        try:
            resp = self.sender.push(self.client, self.event(n))
            ok = resp.status_code == 200 and self.sender.check_reply(resp.get_json()) == "success"
            row = {"kind": "push", "status": resp.status_code, "clean": ok or is_clean_503(resp), "body": None}
            if not row["clean"]:
                row["body"] = resp.get_json(silent=True)
        except Exception as e:  # through the test client: a 500 a server would have sent
            ok, row = False, {"kind": "push", "status": 500, "clean": False, "body": repr(e)}
        row.update(start=started, end=time.time(), n=n)
        self.rows.append(row)
        if ok:
            self.acknowledged.add(f"failover-{n}")
        return ok

    def run(self, start: float, end: float) -> None:
        time.sleep(max(0.0, start - time.time()))
        n, retry = 0, []
        while time.time() < end:
            n += 1
            if not self.push(n):
                retry.append((time.time() + 1.0, n))
            due = [item for item in retry if item[0] <= time.time()]
            for item in due:
                retry.remove(item)
                if not self.push(item[1]):
                    retry.append((time.time() + 1.0, item[1]))
            time.sleep(self.pause)
        for _, m in retry:  # after the run: DingTalk keeps delivering until it is answered
            self.push(m)


def test_failover_under_mixed_load_loses_nothing_acknowledged_and_needs_no_restart(
    sim_server: Any, group: Sentinels, apps: list[Any]
) -> None:
    sim = sim_server.sim
    sim.set_ticket_mode(DEMO_CORPID, "invalidate")  # a ticket fetched twice kills the first: bad signatures show
    pusher_app = make_app(sim_server, group)  # registers the demo corp in the store, and sends the pushes
    apps.append(pusher_app)
    assert pusher_app.test_client().get(CFG).status_code == 200  # the ticket is cached, and on the replica
    group.wait_replicas_in_sync()
    people = [p["unionid"] for p in DEMO_PEOPLE]
    codes = [sim.mint_auth_code(DEMO_CORPID, people[i % len(people)]) for i in range(6000)]
    settings = {
        "DINGTALK_API_BASE": sim_server.base_url,
        "DINGTALK_OPENAPI_BASE": sim_server.base_url,
        "REDIS_URL": group.url,
        "GATEWAY_SECRET_KEY": TEST_SECRET_KEY,
        "GATEWAY_TOKEN_JITTER": 0,
        "_corpid": DEMO_CORPID,
        "_agentid": DEMO_AGENT_ID,
    }
    pusher = Pusher(pusher_app)
    fault: dict[str, Any] = {}

    def kill_primary() -> None:
        fault["port"] = group.kill_primary()
        fault["at"] = time.time()

    start, results = run_timed(
        settings=settings,
        processes=2,
        kinds=["config", "config", "login"],
        seconds=RUN,
        actions=[(KILL_AT, kill_primary)],
        codes=codes,
        beside=pusher.run,
    )
    results += pusher.rows
    new_primary = group.primary_port()
    assert new_primary is not None and new_primary != fault["port"], "no failover happened"

    by_status = Counter((r["kind"], r["status"]) for r in results)
    errors = [r for r in results if r["status"] >= 500]
    unclean = [r for r in errors if not r.get("clean", r["status"] == 503 and r.get("retry_after"))]
    print(f"\nFIGURE requests by kind and status: {dict(sorted(by_status.items()))}")
    assert not [r for r in results if r["status"] == 500], f"500s: {[r['body'] for r in errors][:3]}"
    assert not unclean, f"failures that are not a clean 503 store_unavailable: {unclean[:3]}"
    for r in errors:
        if r["kind"] != "push":
            assert r["body"]["error"]["code"] == "store_unavailable", r["body"]
    # Back without a restart: nothing failed that started later than BACK_WITHIN after the kill ...
    last_failure = max((r["start"] for r in errors), default=fault["at"])
    print(f"FIGURE last failed request started {last_failure - fault['at']:.2f} s after the kill")
    assert last_failure - fault["at"] < BACK_WITHIN
    # ... and every kind of request kept flowing after that (the property is not vacuous).
    later = Counter(r["kind"] for r in results if r["start"] > fault["at"] + BACK_WITHIN and r["status"] == 200)
    assert later["config"] >= 10 and later["login"] >= 5 and later["push"] >= 5, later
    # No invalid signature, before or after: the ticket the replica had is the one DingTalk still honours.
    configs = [r for r in results if r["kind"] == "config" and r["status"] == 200]
    invalid = [r for r in configs if sim.check_config(**{**r["body"], "url": PAGE}) != {"ok": True}]
    assert not invalid, f"{len(invalid)} of {len(configs)} configs with an invalid signature"
    # No push that was answered `success` is missing from the log on the new primary, and none is stored twice.
    store = connect(group.url)
    try:
        logged = Counter(e.ids["UserId"][0] for e in EventLog(store, DEMO_CORPID).recent(count=100_000))
    finally:
        store.close()
    missing = pusher.acknowledged - set(logged)
    print(f"FIGURE pushes acknowledged {len(pusher.acknowledged)}, missing afterwards {len(missing)}")
    assert pusher.acknowledged and not missing, f"acknowledged but lost: {sorted(missing)[:5]}"
    assert max(logged.values()) == 1
    # Each worker's near cache follows: the pusher's app tracks the new primary again.
    wait_for(lambda: tracking(pusher_app) == f"127.0.0.1:{new_primary}", "near cache on the new primary")


def test_a_switchover_is_followed_and_the_near_cache_starts_empty_on_the_new_primary(
    sim_server: Any, group: Sentinels, apps: list[Any]
) -> None:
    app = make_app(sim_server, group)
    apps.append(app)
    client = app.test_client()
    old = group.primary_port()
    assert client.get(CFG).status_code == 200
    wait_for(lambda: tracking(app) == f"127.0.0.1:{old}", "near cache live on the primary")
    body = healthz(app)
    assert body["store_mode"] == "sentinel" and body["near_cache"] == "live"
    flushes = body["near_cache_info"]["flushes"]
    ticket = get_runtime(app).channel_client(get_runtime(app).corp(DEMO_CORPID)).ticket
    kept = ticket.peek()
    assert kept is not None
    group.wait_replicas_in_sync()
    sentinel = redis.Redis(port=group.sentinel_ports[0], decode_responses=True)
    statuses: Counter[int] = Counter()
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            resp = client.get(CFG)
            statuses[resp.status_code] += 1
            assert resp.status_code == 200 or is_clean_503(resp), resp.get_json()
            time.sleep(0.01)

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        assert sentinel.execute_command("SENTINEL", "FAILOVER", "dtgw")  # the old primary becomes a replica
        new = group.wait_failover(old)
        # A credential written on the new primary while this worker was switching over: it must be seen, never the
        # one kept in memory from the old primary.
        store = connect(group.url)
        wait_for(lambda: store_takes_writes(store), "writes on the new primary")
        store.hset(ticket.key, "fp", "written-after-the-switch")
        wait_for(lambda: tracking(app) == f"127.0.0.1:{new}", "near cache live on the new primary")
        store.close()
    finally:
        stop.set()
        thread.join(10)
        sentinel.close()
    assert healthz(app)["near_cache_info"]["flushes"] > flushes
    assert ticket.peek() is None or ticket.peek().fingerprint != kept.fingerprint  # type: ignore[union-attr]
    assert statuses[200] >= 1 and set(statuses) <= {200, 503}, statuses
    assert client.get("/healthz").status_code == 200


def store_takes_writes(store: Any) -> bool:
    try:
        return bool(store.set(corp_key(DEMO_CORPID, "probe"), "1", ex=5))
    except redis.exceptions.RedisError:
        return False


def test_a_connection_that_lands_on_a_replica_gets_readonly_and_a_clean_503(
    sim_server: Any, group: Sentinels, apps: list[Any]
) -> None:
    """What a demoted primary answers (READONLY) is a 503, and the next connection goes to the primary."""
    app = make_app(sim_server, group)
    apps.append(app)
    client = app.test_client()
    assert client.get(CFG).status_code == 200
    store = get_runtime(app).store
    pool = store.connection_pool
    replica = next(port for port in group.servers if port != group.primary_port())
    real = pool.proxy.get_master_address
    # As if the sentinels had named the old primary a moment after it was demoted: the next connections land on a
    # replica, which answers every write with READONLY.
    pool.proxy.get_master_address = lambda: ("127.0.0.1", replica)
    pool.disconnect()
    try:
        report = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": PAGE, "errorCode": 52013}
        resp = client.post("/channel/config/error", json=report)  # needs a write
        assert is_clean_503(resp), (resp.status_code, resp.get_json())
        assert "unreachable" in resp.get_json()["error"]["message"]  # redis-py drops the connection
    finally:
        pool.proxy.get_master_address = real
    assert client.post("/channel/config/error", json=report).status_code == 202


def ballast_bytes() -> int:
    """More than the kernel's socket buffers between two loopback peers can hold (the receiver's tcp_rmem maximum
    and the sender's tcp_wmem maximum): written while the replica is frozen, it keeps what follows in the
    primary's own output buffer, which dies with the primary."""
    try:
        rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
        wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 64 << 20
    return rmem + wmem + (8 << 20)


def push_while_the_replica_is_cut_off_then_lose_the_primary(group: Sentinels, client: Any, event: Any) -> Any:
    """Freeze the replica (still connected, receiving nothing more), send the push, SIGKILL the primary, thaw the
    replica and wait for it to be promoted; return the push's answer."""
    old = group.primary_port()
    assert old is not None
    replica = next(s for port, s in group.servers.items() if port != old)
    assert replica.proc is not None
    os.kill(replica.proc.pid, signal.SIGSTOP)
    try:
        direct = redis.Redis(port=old)
        direct.set("ballast", b"x" * ballast_bytes())  # fills the pipe to the replica: what follows stays behind
        direct.close()
        resp = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID).push(client, event)
        assert group.kill_primary() == old  # with whatever no replica has
    finally:
        os.kill(replica.proc.pid, signal.SIGCONT)
    group.wait_failover(old)
    return resp


def logged_users(app: Any) -> list[list[str]]:
    store = get_runtime(app).store
    wait_for(lambda: store_takes_writes(store), "writes on the new primary")
    return [e.ids["UserId"] for e in EventLog(store, DEMO_CORPID).recent()]


LEFT = {"EventType": "user_leave_org", "UserId": ["durable-1"], "TimeStamp": "1700000000000"}


def test_a_push_no_replica_acknowledges_is_a_503_and_survives_as_its_redelivery(
    sim_server: Any, group: Sentinels, apps: list[Any]
) -> None:
    """The replica is cut off when a push arrives, and then the primary dies with the push. It was answered 503,
    not `success`, so DingTalk delivers it again, to the new primary, where it is stored once."""
    app = make_app(sim_server, group)
    apps.append(app)
    client = app.test_client()
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
    ok = sender.push(client, {**LEFT, "UserId": ["durable-0"]})
    assert ok.status_code == 200 and sender.check_reply(ok.get_json()) == "success"
    started = time.monotonic()
    resp = push_while_the_replica_is_cut_off_then_lose_the_primary(group, client, LEFT)
    assert is_clean_503(resp), (resp.status_code, resp.get_json())
    assert "replica" in resp.get_json()["error"]["message"]
    assert logged_users(app) == [["durable-0"]]  # it really was lost with the primary
    deadline = time.monotonic() + 20
    while (again := sender.push(client, LEFT)).status_code != 200:  # DingTalk's redeliveries
        assert is_clean_503(again) and time.monotonic() < deadline, again.get_json()
        time.sleep(0.2)
    assert sender.check_reply(again.get_json()) == "success"
    assert sender.push(client, LEFT).status_code == 200  # one more redelivery: a duplicate
    assert logged_users(app) == [["durable-0"], ["durable-1"]]
    assert time.monotonic() - started < 60


def test_without_the_wait_for_a_replica_the_same_push_is_acknowledged_and_lost(
    sim_server: Any, group: Sentinels, apps: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control: the gateway before this change (record on the primary, answer at once) acknowledges the push
    the previous test refuses, and the primary takes it along when it dies."""
    import corp.events

    def without_wait(store: Any, key: str, queue: Any, *, timeout: float) -> Any:
        pipe = store.pipeline(transaction=False)
        queue(pipe)
        return pipe.execute(), Replication(0, 0)

    monkeypatch.setattr(corp.events, "write_replicated", without_wait)
    app = make_app(sim_server, group)
    apps.append(app)
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
    resp = push_while_the_replica_is_cut_off_then_lose_the_primary(group, app.test_client(), LEFT)
    assert resp.status_code == 200 and sender.check_reply(resp.get_json()) == "success"
    assert logged_users(app) == []  # acknowledged, and gone


def test_healthz_names_the_store_and_what_the_near_cache_tracks(
    sim_server: Any, group: Sentinels, apps: list[Any]
) -> None:
    app = make_app(sim_server, group)
    apps.append(app)
    wait_for(lambda: healthz(app)["near_cache"] == "live", "near cache live")
    body = healthz(app)
    assert body["status"] == "ok" and body["store_mode"] == "sentinel"
    assert body["near_cache_info"] == {"tracking": f"127.0.0.1:{group.primary_port()}", "flushes": 0, "reason": None}
    assert json.dumps(body).count("127.0.0.1") == 1  # no URL, no password: just the tracked server
