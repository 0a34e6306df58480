"""Events over Stream mode (oapi/stream.py, corp/stream.py, corp/stream_state.py, `flask events stream`), against the
simulator's Stream gateway (sandbox/stream.py) and a real Redis.

The receiver runs on a thread of its own here (its asyncio loop, as `flask events stream` runs it), or as that very
command in a child process where a test kills it or sends it SIGTERM. Timings are bounds, never speeds: backoff is
set small (GATEWAY_STREAM_BACKOFF_*), and each wait has a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from corp.events import EventLog, stream_key
from corp.follows import FollowCache
from corp.stream import StreamRunner
from corp.stream_state import SILENT, StreamStates
from oapi.stream import (
    BACKOFF,
    CONNECTED,
    STOPPED,
    Backoff,
    StreamClient,
    StreamEvent,
    StreamSettings,
)
from sandbox.demo import DEMO_APP_KEY, DEMO_CORPID, DEMO_ORG_CORPID, DEMO_WINDOW_APP_KEY, DEMO_WINDOW_CORPID
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from sandbox.stream import OPEN_CONNECTION, Ack
from tests.helpers import TEST_SECRET_KEY, make_config, register_demo
from tests.test_login_kinds import (
    BY_UNIONID,
    FOLLOWER_EMPLOYEE,
    STATUSES,
    follower_code,
    internal_app,
    login,
    window_app,
)
from web.runtime import get_runtime

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parent.parent
BACKOFF_MIN, BACKOFF_MAX = 0.05, 0.5
# What a reconnect may take beyond the backoff on a loaded machine: the open call and the WebSocket handshake.
RECONNECT_SLACK = 5.0
WAIT = 30.0

STREAM_CONFIG = {
    "GATEWAY_STREAM_BACKOFF_MIN": BACKOFF_MIN,
    "GATEWAY_STREAM_BACKOFF_MAX": BACKOFF_MAX,
    "GATEWAY_STREAM_TIMEOUT": 2.0,
    "GATEWAY_STREAM_RESCAN": 0.3,
}


@pytest.fixture
def gateway(sim_server: SimulatorServer, real_redis: redis.Redis, redis_url: str) -> Iterator[Any]:
    """The gateway on a real Redis, its Stream settings small, the demo's internal app and window registered."""
    from app import create_app

    application = create_app(make_config(sim_server, REDIS_URL=redis_url, **STREAM_CONFIG))
    registry = get_runtime(application).registry
    registry.add(internal_app())
    registry.add(window_app())
    yield application
    get_runtime(application).close()


class Receiver:
    """A StreamRunner on a thread of its own, as `flask events stream` runs it."""

    def __init__(self, runner: StreamRunner) -> None:
        self.runner = runner
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.error: BaseException | None = None
        ready = threading.Event()

        async def main() -> None:
            self.stop_event = asyncio.Event()
            ready.set()
            await runner.run(self.stop_event)

        def run() -> None:
            try:
                self.loop.run_until_complete(main())
            except BaseException as e:
                self.error = e
            finally:
                ready.set()
                self.loop.close()

        self.thread = threading.Thread(target=run, name="stream-receiver", daemon=True)
        self.thread.start()
        ready.wait(10)

    def client(self, corpid: str) -> StreamClient:
        return self.runner.running[corpid].client

    def stop(self, timeout: float = WAIT) -> None:
        if self.thread.is_alive() and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the receiver did not stop"


@pytest.fixture
def receive(gateway: Any) -> Iterator[Any]:
    """Start a receiver for the given corpids (all current-kind corps when none)."""
    started: list[Receiver] = []

    def start(*corpids: str, **kw: Any) -> Receiver:
        receiver = Receiver(StreamRunner(get_runtime(gateway), corpids, **kw))
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def until(check: Any, timeout: float = WAIT, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} did not hold within {timeout} s"
        time.sleep(0.02)


def connected(sim: Simulator, app_key: str) -> bool:
    return bool(sim.stream.live(app_key))


def log_of(gateway: Any, corpid: str = DEMO_ORG_CORPID) -> EventLog:
    return EventLog(get_runtime(gateway).store, corpid)


# -- unit: the SDK-facing pieces ----------------------------------------------------------------------------------


def test_backoff_stays_within_its_bounds_and_restarts_low() -> None:
    import random

    backoff = Backoff(1.0, 60.0, rng=random.Random(7))
    delays = []
    for _ in range(12):
        delays.append(backoff.delay())
        backoff.failed()
    assert all(1.0 <= d <= 60.0 for d in delays)
    assert delays[0] <= 1.25 and delays[-1] == 60.0
    assert delays == sorted(delays)
    backoff.succeeded()
    assert backoff.delay() <= 1.25


def test_a_stream_event_reads_as_a_push_would() -> None:
    event = StreamEvent("ev-1", "user_leave_org", "dingcorp", 1700000000123, {"userId": ["u1"], "optStaffId": "x"})
    assert event.as_event() == {
        "userId": ["u1"],
        "UserId": ["u1"],
        "optStaffId": "x",
        "EventType": "user_leave_org",
        "EventId": "ev-1",
        "TimeStamp": "1700000000123",
        "CorpId": "dingcorp",
    }
    follow = StreamEvent(None, "official_account_follow", None, None, [{"userId": "v1"}]).as_event()
    assert follow == {"data": [{"userId": "v1"}], "EventType": "official_account_follow"}


# -- against the simulator ------------------------------------------------------------------------------------------


def test_an_event_is_recorded_then_acknowledged(gateway: Any, sim: Simulator, receive: Any) -> None:
    receiver = receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    event_id = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"userId": ["u1"]})
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the acknowledgement")
    [event] = log_of(gateway).recent()
    assert (event.type, event.ids) == ("user_add_org", {"UserId": ["u1"]})
    assert (event.source, event.event_id) == ("stream", event_id)
    status = receiver.client(DEMO_ORG_CORPID).status
    assert (status.state, status.events, status.acks) == (CONNECTED, 1, 1) and status.last_event is not None


def test_200_events_with_duplicates_drops_and_a_disconnect_are_each_recorded_once(
    gateway: Any, sim: Simulator, receive: Any
) -> None:
    """The acceptance run: 200 events, 20 delivered twice, the connection dropped twice and one `disconnect`, all
    mid-stream. Every event is recorded exactly once, every recorded one acknowledged, none acknowledged before it
    was recorded (checked as each acknowledgement arrives), and each reconnect comes within the backoff bound."""
    log = log_of(gateway)
    early: list[Ack] = []

    def check_recorded(ack: Ack) -> None:
        if ack.event_id is not None and log.find({"EventId": ack.event_id}) is None:
            early.append(ack)

    sim.stream.on_ack = check_recorded
    sim.stream.redeliver_after = None  # redeliveries here come from reconnects and `duplicate` only
    receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    pushed: list[str] = []
    for n in range(200):
        kind = ("user_add_org", "user_modify_org", "user_leave_org", "org_dept_create")[n % 4]
        pushed.append(sim.stream.push(DEMO_APP_KEY, kind, {"userId": [f"user{n:03d}"], "timeStamp": 1700000000000 + n}))
        if n % 10 == 5:
            sim.stream.duplicate(DEMO_APP_KEY, pushed[n - 3])  # 20 in all, some acknowledged by now, some not
        if n in (60, 140):
            sim.stream.drop(DEMO_APP_KEY)
        if n == 100:
            sim.stream.disconnect(DEMO_APP_KEY)
        if n == 170:
            sim.stream.ping(DEMO_APP_KEY)
        if n in (61, 101, 141):  # the next connection is up before the next interruption
            count = {61: 2, 101: 3, 141: 4}[n]
            until(lambda c=count: len(sim.stream.connections(DEMO_APP_KEY)) == c and connected(sim, DEMO_APP_KEY))
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="every event acknowledged")

    entries = get_runtime(gateway).store.xrange(stream_key(DEMO_ORG_CORPID))
    recorded = [fields["event_id"] for _id, fields in entries]
    assert sorted(recorded) == sorted(pushed)  # each exactly once
    acked = {a.event_id for a in sim.stream.acks(DEMO_APP_KEY) if a.code == 200}
    assert acked == set(pushed)
    assert early == []
    until(lambda: any(a.event_id is None and a.code == 200 for a in sim.stream.acks(DEMO_APP_KEY, events_only=False)))
    connections = sim.stream.connections(DEMO_APP_KEY)
    assert [c.how for c in connections] == ["dropped", "closed", "dropped", "open"]  # "closed": by the client
    for ended, following in zip(connections, connections[1:], strict=False):
        assert ended.closed_at is not None
        assert following.opened_at - ended.closed_at <= BACKOFF_MAX + RECONNECT_SLACK


def test_user_leave_org_over_stream_makes_the_next_login_miss_the_link_cache(
    gateway: Any, sim: Simulator, receive: Any
) -> None:
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).get_json()["linked"] is True
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(BY_UNIONID) == 1  # the second login used the cached link
    receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    sim.stream.push(DEMO_APP_KEY, "user_leave_org", {"userId": ["manager0001"], "timeStamp": 1700000000000})
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the acknowledgement")
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    assert sim.app_controls.calls(BY_UNIONID) == 2  # the link was asked for again


def test_follow_events_over_stream_update_the_follow_status(gateway: Any, sim: Simulator, receive: Any) -> None:
    who = FOLLOWER_EMPLOYEE["userid"]
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 200
    receive(DEMO_WINDOW_CORPID)
    until(lambda: connected(sim, DEMO_WINDOW_APP_KEY), what="a connection")
    sim.followers.unfollow(DEMO_WINDOW_CORPID, who)
    data = {"data": [{"userId": who, "name": "x", "type": "1", "timestamp": 1700000000000}]}
    event_id = sim.stream.push(DEMO_WINDOW_APP_KEY, "official_account_unfollow", data)
    until(lambda: not sim.stream.pending(DEMO_WINDOW_APP_KEY), what="the acknowledgement")
    rt = get_runtime(gateway)
    assert FollowCache(rt.store, DEMO_WINDOW_CORPID, 60).get(who) is False
    assert login(gateway, DEMO_WINDOW_CORPID, follower_code(sim, FOLLOWER_EMPLOYEE)).status_code == 403
    # A redelivered unfollow after a follow does not undo the follow: only a first delivery acts.
    sim.followers.follow(DEMO_WINDOW_CORPID, who)
    sim.stream.push(DEMO_WINDOW_APP_KEY, "official_account_follow", data)
    until(lambda: not sim.stream.pending(DEMO_WINDOW_APP_KEY), what="the acknowledgement")
    sim.stream.duplicate(DEMO_WINDOW_APP_KEY, event_id)
    until(lambda: len(sim.stream.acks(DEMO_WINDOW_APP_KEY)) == 3, what="the acknowledgement")
    assert FollowCache(rt.store, DEMO_WINDOW_CORPID, 60).get(who) is True
    assert sim.app_controls.calls(STATUSES) == 1


def test_with_the_store_down_nothing_is_acknowledged_and_it_reconnects_later(
    gateway: Any, sim: Simulator, receive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corp.stream

    down = threading.Event()
    real_record = corp.stream.record_and_apply

    def record(*args: Any, **kw: Any) -> Any:
        if down.is_set():
            raise redis.ConnectionError("store down (test)")
        return real_record(*args, **kw)

    monkeypatch.setattr(corp.stream, "record_and_apply", record)
    receiver = receive(DEMO_ORG_CORPID)
    monkeypatch.setattr(receiver.runner, "store_ready", lambda: not down.is_set())
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    down.set()
    event_id = sim.stream.push(DEMO_APP_KEY, "user_leave_org", {"userId": ["u1"]})
    until(lambda: not connected(sim, DEMO_APP_KEY), what="the connection closed")
    status = receiver.client(DEMO_ORG_CORPID).status
    until(lambda: status.reconnects >= 3, what="attempts while the store is down")
    assert sim.stream.pending(DEMO_APP_KEY) == [event_id] and sim.stream.acks(DEMO_APP_KEY) == []
    assert not connected(sim, DEMO_APP_KEY)  # no connection is opened while its events could not be recorded
    assert status.state in (BACKOFF, "connecting") and status.last_error
    down.clear()
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the event acknowledged once the store is back")
    assert [e.event_id for e in log_of(gateway).recent()] == [event_id]


def test_an_event_that_fails_alone_is_left_unacknowledged_and_the_rest_go_on(
    gateway: Any, sim: Simulator, receive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import corp.stream

    real_record = corp.stream.record_and_apply

    def record(rt: Any, corpid: str, event: dict[str, Any], **kw: Any) -> Any:
        if event.get("EventType") == "poison":
            raise ValueError("cannot read it")
        return real_record(rt, corpid, event, **kw)

    monkeypatch.setattr(corp.stream, "record_and_apply", record)
    receiver = receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    poison = sim.stream.push(DEMO_APP_KEY, "poison", {})
    fine = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"userId": ["u1"]})
    until(lambda: sim.stream.pending(DEMO_APP_KEY) == [poison], what="the other event acknowledged")
    assert [e.event_id for e in log_of(gateway).recent()] == [fine]
    assert len(sim.stream.connections(DEMO_APP_KEY)) == 1  # the connection went on
    assert receiver.client(DEMO_ORG_CORPID).status.last_error == "record: ValueError"


def test_opening_a_connection_times_out_and_is_tried_again(gateway: Any, sim: Simulator, receive: Any) -> None:
    sim.app_controls.set_latency(OPEN_CONNECTION, 4.0)  # above GATEWAY_STREAM_TIMEOUT (2 s)
    receiver = receive(DEMO_ORG_CORPID)
    until(lambda: receiver.runner.running.get(DEMO_ORG_CORPID) is not None, what="the client")
    status = receiver.client(DEMO_ORG_CORPID).status
    until(lambda: status.reconnects >= 1, timeout=15, what="a timed-out open")
    assert status.last_error and status.last_error.startswith("open:")
    sim.app_controls.set_latency(OPEN_CONNECTION, 0)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection once the gateway answers")


def test_a_refused_app_secret_backs_off_and_says_why(gateway: Any, sim: Simulator, receive: Any) -> None:
    get_runtime(gateway).registry.add(internal_app(app_secret="wrong"), renew=True)
    receiver = receive(DEMO_ORG_CORPID)
    until(lambda: receiver.runner.running.get(DEMO_ORG_CORPID) is not None, what="the client")
    status = receiver.client(DEMO_ORG_CORPID).status
    until(lambda: status.reconnects >= 2, what="attempts")
    assert status.last_error == "open: invalidClientIdOrSecret"
    assert not sim.stream.connections(DEMO_APP_KEY)


def test_the_registry_is_followed(gateway: Any, sim: Simulator, receive: Any) -> None:
    rt = get_runtime(gateway)
    rt.registry.remove(DEMO_WINDOW_CORPID)
    receiver = receive()  # every current-kind corp
    until(lambda: connected(sim, DEMO_APP_KEY), what="the internal app")
    assert not sim.stream.connections(DEMO_WINDOW_APP_KEY)
    rt.registry.add(window_app())
    until(lambda: connected(sim, DEMO_WINDOW_APP_KEY), what="the window added meanwhile")
    first = sim.stream.connections(DEMO_APP_KEY)[0]
    rt.registry.add(internal_app(), renew=True)  # a new registration: a new connection with its credentials
    until(lambda: first.closed_at is not None and connected(sim, DEMO_APP_KEY), what="a new connection")
    rt.registry.remove(DEMO_WINDOW_CORPID)
    until(lambda: not connected(sim, DEMO_WINDOW_APP_KEY), what="the window disconnected")
    assert DEMO_WINDOW_CORPID not in receiver.runner.running


def test_healthz_shows_each_apps_state_and_last_event(gateway: Any, sim: Simulator, receive: Any) -> None:
    client = gateway.test_client()
    assert client.get("/healthz").json["streams"] == {}
    receiver = receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    sim.stream.push(DEMO_APP_KEY, "user_add_org", {"userId": ["u1"]})
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the acknowledgement")

    def report() -> dict[str, Any]:
        streams: dict[str, Any] = client.get("/healthz").json["streams"]
        return streams.get(DEMO_ORG_CORPID) or {}

    until(lambda: report().get("last_event") is not None, what="the report")
    shown = report()
    assert shown["state"] == CONNECTED and shown["app_key"] == DEMO_APP_KEY and shown["acks"] == 1
    assert TEST_SECRET_KEY not in str(shown)
    receiver.stop()
    assert report()["state"] == STOPPED
    rt = get_runtime(gateway)
    rt.store.delete(f"dtgw:v1:{{{DEMO_ORG_CORPID}}}:stream")  # as when the report expires: nobody reports
    assert StreamStates(rt.store).read_all()[DEMO_ORG_CORPID]["state"] == SILENT


def test_stream_metrics_count_events_acks_and_reconnects(gateway: Any, sim: Simulator, receive: Any) -> None:
    from prometheus_client import REGISTRY

    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"corpid": DEMO_ORG_CORPID, **labels}) or 0.0

    before = (
        value("dtgw_stream_events_total", outcome="stored"),
        value("dtgw_stream_acks_total"),
        value("dtgw_stream_reconnects_total", reason="dropped"),
    )
    receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    sim.stream.push(DEMO_APP_KEY, "user_add_org", {"userId": ["u1"]})
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the acknowledgement")
    sim.stream.drop(DEMO_APP_KEY)
    until(lambda: len(sim.stream.connections(DEMO_APP_KEY)) == 2 and connected(sim, DEMO_APP_KEY), what="a reconnect")
    after = (
        value("dtgw_stream_events_total", outcome="stored"),
        value("dtgw_stream_acks_total"),
        value("dtgw_stream_reconnects_total", reason="dropped"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    assert value("dtgw_stream_connected") == 1


def test_the_cli_refuses_what_has_no_stream_mode(gateway: Any) -> None:
    register_demo(gateway)  # kind channel
    runner = gateway.test_cli_runner()
    refused = runner.invoke(args=["events", "stream", DEMO_CORPID])
    assert refused.exit_code == 2 and "no Stream mode" in refused.output
    unknown = runner.invoke(args=["events", "stream", "dingnobody"])
    assert unknown.exit_code == 2 and "not registered" in unknown.output
    helped = runner.invoke(args=["events", "stream", "--help"])
    assert "Stream mode" in helped.output and "SIGTERM" in helped.output


# -- the command as a process: killed mid-event, stopped by SIGTERM ----------------------------------------------


def spawn(sim_server: SimulatorServer, redis_url: str, log: Path, *corpids: str) -> subprocess.Popen[bytes]:
    """`flask events stream CORPID…` as a child process, its logs to `log` (a file: a pipe nobody reads fills)."""
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DINGTALK_API_BASE=sim_server.base_url,
        DINGTALK_OPENAPI_BASE=sim_server.base_url,
        GATEWAY_SECRET_KEY=TEST_SECRET_KEY,
        GATEWAY_SANDBOX="0",
        **{k: str(v) for k, v in STREAM_CONFIG.items()},
    )
    argv = [sys.executable, "-m", "flask", "--app", "app:create_app", "events", "stream", *corpids]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=out)


def recording_blocked(store: redis.Redis) -> bool:
    """A client of the store waits in the event log's script (paused writes): an event received, not recorded."""
    return any(c.get("cmd") == "evalsha" and "b" in c.get("flags", "") for c in store.client_list())


def test_killed_between_receiving_and_recording_the_event_comes_again_and_is_recorded_once(
    gateway: Any, sim_server: SimulatorServer, sim: Simulator, real_redis: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "stream.log"
    first = spawn(sim_server, redis_url, log, DEMO_ORG_CORPID)
    try:
        until(lambda: connected(sim, DEMO_APP_KEY), what="the process connected")
        sim.stream.push(DEMO_APP_KEY, "user_add_org", {"userId": ["u0"]})  # loads the log's script
        until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the first event acknowledged")
        # Writes wait (reads go on): the next event is received, and its recording blocks in the store.
        real_redis.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
        try:
            event_id = sim.stream.push(DEMO_APP_KEY, "user_leave_org", {"userId": ["manager0001"]})
            until(lambda: recording_blocked(real_redis), what="the recording under way")
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        finally:
            real_redis.execute_command("CLIENT", "UNPAUSE")
        assert event_id in sim.stream.pending(DEMO_APP_KEY)  # never acknowledged
        assert not any(a.event_id == event_id for a in sim.stream.acks(DEMO_APP_KEY))
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    second = spawn(sim_server, redis_url, log, DEMO_ORG_CORPID)
    try:
        until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the event redelivered and acknowledged")
        events = [e.event_id for e in log_of(gateway).recent()]
        assert events.count(event_id) == 1 and len(events) == 2
        # SIGTERM: the process closes its connection and exits cleanly, its state reported as stopped.
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text(errors="replace")[-3000:]
        until(lambda: not connected(sim, DEMO_APP_KEY), what="the connection closed")
        assert sim.stream.connections(DEMO_APP_KEY)[-1].how == "closed"  # a closing handshake, not a drop
        report = StreamStates(real_redis).read_all()[DEMO_ORG_CORPID]
        assert report["state"] == STOPPED
    finally:
        if second.poll() is None:
            second.kill()
            second.wait(10)


def test_settings_validate_the_backoff(sim_server: SimulatorServer) -> None:
    from app import create_app

    with pytest.raises(RuntimeError, match="GATEWAY_STREAM_BACKOFF_MIN"):
        create_app(make_config(sim_server, GATEWAY_STREAM_BACKOFF_MIN=5, GATEWAY_STREAM_BACKOFF_MAX=1))
    settings = StreamSettings()
    assert (settings.backoff_min, settings.backoff_max) == (1.0, 60.0)


def test_sandbox_mode_pushes_demo_events_over_stream(sim_server: SimulatorServer, sim: Simulator) -> None:
    from app import create_app

    application = create_app(make_config(sim_server, GATEWAY_SANDBOX=True))
    try:
        client = application.test_client()
        body = {"corpid": DEMO_ORG_CORPID, "event_type": "user_leave_org", "data": {"userId": ["manager0001"]}}
        answer = client.post("/sandbox/stream/push", json=body).get_json()
        assert answer["errcode"] == 0 and sim.stream.pending(DEMO_APP_KEY) == [answer["event_id"]]
        legacy = client.post("/sandbox/stream/push", json={**body, "corpid": DEMO_CORPID})
        assert legacy.status_code == 400
    finally:
        get_runtime(application).close()


def test_the_local_stack_runs_the_receiver_beside_gunicorn(real_redis: redis.Redis, redis_url: str) -> None:
    """scripts/serve's stack (sandbox/stack.py) with `stream`: the demo apps connect, an event pushed to the shared
    simulator is recorded, /healthz on gunicorn shows it, and the receiver's own metrics port counts it."""
    import requests

    from sandbox.stack import Stack

    stack = Stack(workers=1, threads=2, sandbox=True, redis_url=redis_url, stream=True)
    try:
        stack.start_simulator()
        stack.start_gunicorn()
        stack.start_stream()

        def report() -> dict[str, Any]:
            streams = requests.get(f"{stack.gunicorn_url}/healthz", timeout=5).json()["streams"]
            return dict(streams.get(DEMO_ORG_CORPID) or {})

        until(lambda: report().get("state") == CONNECTED, what="the demo app connected")
        push = {"app_key": DEMO_APP_KEY, "event_type": "user_add_org", "data": {"userId": ["u1"]}}
        requests.post(f"{stack.api_base}/_sim/stream/push", json=push, timeout=5).raise_for_status()
        until(lambda: report().get("acks") == 1, what="the event acknowledged")
        metrics = requests.get(f"http://127.0.0.1:{stack.stream_metrics_port}/metrics", timeout=5).text
        assert f'dtgw_stream_acks_total{{corpid="{DEMO_ORG_CORPID}"}} 1.0' in metrics
        assert EventLog(real_redis, DEMO_ORG_CORPID).recent()[0].source == "stream"
    finally:
        stack.stop()


def test_an_event_taken_over_http_and_over_stream_is_recorded_once(gateway: Any, sim: Simulator, receive: Any) -> None:
    """The common id: a push whose payload carries DingTalk's eventId, then the same event over Stream mode (its
    eventId header): one entry, and the Stream delivery is still acknowledged (as a duplicate)."""
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, Sender

    get_runtime(gateway).registry.add(internal_app(callback_token=CALLBACK_TOKEN, aes_key=AES_KEY), renew=True)
    pushed = {"EventType": "user_leave_org", "eventId": "ev-both-ways", "UserId": ["ext0001"], "TimeStamp": "1"}
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_ORG_CORPID)
    assert sender.push(gateway.test_client(), pushed, url=f"/ding/callback/{DEMO_ORG_CORPID}").status_code == 200
    receive(DEMO_ORG_CORPID)
    until(lambda: connected(sim, DEMO_APP_KEY), what="a connection")
    sim.stream.push(DEMO_APP_KEY, "user_leave_org", {"userId": ["ext0001"]}, event_id="ev-both-ways")
    until(lambda: not sim.stream.pending(DEMO_APP_KEY), what="the acknowledgement")
    [event] = log_of(gateway).recent()
    assert (event.event_id, event.source) == ("ev-both-ways", "push")
