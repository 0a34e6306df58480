"""The simulator's Stream gateway (sandbox/stream.py, sandbox/stream_http.py), driven as a client of DingTalk would:
the connection-open call over HTTP, then a WebSocket (the `websockets` library's sync client, written from the
protocol in the module docstring, not from the gateway's receiver)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sandbox.demo import DEMO_APP_KEY, DEMO_APP_SECRET, DEMO_ORG_CORPID, DEMO_WINDOW_APP_KEY
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from sandbox.stream import OPEN_CONNECTION

SUBSCRIPTIONS = [{"type": "EVENT", "topic": "*"}]


def open_connection(base: str, secret: str = DEMO_APP_SECRET, **body: Any) -> requests.Response:
    payload = {"clientId": DEMO_APP_KEY, "clientSecret": secret, "subscriptions": SUBSCRIPTIONS, "ua": "test"}
    payload.update(body)
    return requests.post(f"{base}/{OPEN_CONNECTION}", json=payload, timeout=5)


@pytest.fixture
def ws(sim_server: SimulatorServer) -> Iterator[ClientConnection]:
    answer = open_connection(sim_server.base_url).json()
    with connect(f"{answer['endpoint']}?ticket={answer['ticket']}", open_timeout=5) as conn:
        assert sim_server.sim.stream.wait_for(lambda: bool(sim_server.sim.stream.live(DEMO_APP_KEY)), 5)
        yield conn


def receive(conn: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    return json.loads(conn.recv(timeout=timeout))


def ack(conn: ClientConnection, frame: dict[str, Any], code: int = 200) -> None:
    conn.send(json.dumps({"code": code, "headers": {"messageId": frame["headers"]["messageId"]}, "message": "OK"}))


def test_open_checks_the_apps_credentials(sim_server: SimulatorServer) -> None:
    answer = open_connection(sim_server.base_url)
    assert answer.status_code == 200
    body = answer.json()
    assert body["endpoint"].startswith("ws://127.0.0.1:") and body["ticket"]
    wrong = open_connection(sim_server.base_url, secret="nope")
    assert (wrong.status_code, wrong.json()["code"]) == (400, "invalidClientIdOrSecret")
    empty = open_connection(sim_server.base_url, subscriptions=[])
    assert empty.status_code == 400


def test_a_ticket_opens_one_connection_only(sim_server: SimulatorServer) -> None:
    answer = open_connection(sim_server.base_url).json()
    url = f"{answer['endpoint']}?ticket={answer['ticket']}"
    with connect(url, open_timeout=5):
        with pytest.raises(InvalidStatus):
            connect(url, open_timeout=5)
    with pytest.raises(InvalidStatus):
        connect(f"{answer['endpoint']}?ticket=forged", open_timeout=5)


def test_an_event_is_framed_as_the_sdk_reads_it_and_acknowledged(sim: Simulator, ws: ClientConnection) -> None:
    event_id = sim.stream.push(DEMO_APP_KEY, "user_leave_org", {"UserId": ["manager0001"]})
    frame = receive(ws)
    assert frame["type"] == "EVENT"
    headers = frame["headers"]
    assert (headers["eventId"], headers["eventType"], headers["eventCorpId"]) == (
        event_id,
        "user_leave_org",
        DEMO_ORG_CORPID,
    )
    assert json.loads(frame["data"]) == {"UserId": ["manager0001"]}
    assert sim.stream.pending(DEMO_APP_KEY) == [event_id]
    ack(ws, frame)
    assert sim.stream.wait_for(lambda: not sim.stream.pending(DEMO_APP_KEY), 5)
    [received] = sim.stream.acks(DEMO_APP_KEY)
    assert (received.event_id, received.code, received.message_id) == (event_id, 200, headers["messageId"])


def test_a_refusing_ack_leaves_the_event_pending(sim: Simulator, ws: ClientConnection) -> None:
    event_id = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u1"]})
    ack(ws, receive(ws), code=500)
    assert sim.stream.wait_for(lambda: bool(sim.stream.acks(DEMO_APP_KEY)), 5)
    assert sim.stream.pending(DEMO_APP_KEY) == [event_id]


def test_unacknowledged_events_are_redelivered_to_the_next_connection(
    sim_server: SimulatorServer, sim: Simulator, ws: ClientConnection
) -> None:
    first = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u1"]})
    second = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u2"]})
    one, two = receive(ws), receive(ws)
    ack(ws, one)
    assert sim.stream.wait_for(lambda: sim.stream.pending(DEMO_APP_KEY) == [second], 5)
    ws.close()
    answer = open_connection(sim_server.base_url).json()
    with connect(f"{answer['endpoint']}?ticket={answer['ticket']}", open_timeout=5) as again:
        frame = receive(again)
        assert frame["headers"]["eventId"] == second != first
        assert frame["headers"]["messageId"] != two["headers"]["messageId"]
        ack(again, frame)
        assert sim.stream.wait_for(lambda: not sim.stream.pending(DEMO_APP_KEY), 5)


def test_a_live_connection_gets_a_late_event_again(sim: Simulator, ws: ClientConnection) -> None:
    sim.stream.redeliver_after = 0.3
    event_id = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u1"]})
    first, again = receive(ws), receive(ws)
    assert first["headers"]["eventId"] == again["headers"]["eventId"] == event_id
    ack(ws, again)
    assert sim.stream.wait_for(lambda: not sim.stream.pending(DEMO_APP_KEY), 5)


def test_duplicate_delivers_an_acknowledged_event_again(sim: Simulator, ws: ClientConnection) -> None:
    event_id = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u1"]})
    ack(ws, receive(ws))
    assert sim.stream.wait_for(lambda: not sim.stream.pending(DEMO_APP_KEY), 5)
    sim.stream.duplicate(DEMO_APP_KEY, event_id)
    frame = receive(ws)
    assert frame["headers"]["eventId"] == event_id
    ack(ws, frame)
    assert sim.stream.wait_for(lambda: len(sim.stream.acks(DEMO_APP_KEY)) == 2, 5)


def test_ping_is_a_system_message_to_acknowledge(sim: Simulator, ws: ClientConnection) -> None:
    assert sim.stream.ping(DEMO_APP_KEY) == 1
    frame = receive(ws)
    assert (frame["type"], frame["headers"]["topic"]) == ("SYSTEM", "ping")
    ack(ws, frame)
    assert sim.stream.wait_for(lambda: bool(sim.stream.acks(DEMO_APP_KEY, events_only=False)), 5)
    assert sim.stream.acks(DEMO_APP_KEY) == []  # events only, by default


def test_after_disconnect_nothing_is_delivered_and_the_gateway_closes(sim: Simulator, ws: ClientConnection) -> None:
    sim.stream.disconnect_grace = 0.3
    assert sim.stream.disconnect(DEMO_APP_KEY) == 1
    frame = receive(ws)
    assert (frame["type"], frame["headers"]["topic"]) == ("SYSTEM", "disconnect")
    event_id = sim.stream.push(DEMO_APP_KEY, "user_add_org", {"UserId": ["u1"]})
    with pytest.raises(ConnectionClosed):
        receive(ws)  # closed by the gateway after the grace, with nothing more delivered
    assert sim.stream.pending(DEMO_APP_KEY) == [event_id]
    assert [c.how for c in sim.stream.connections(DEMO_APP_KEY)] == ["disconnected"]


def test_drop_cuts_the_connection_without_a_close_frame(sim: Simulator, ws: ClientConnection) -> None:
    assert sim.stream.drop(DEMO_APP_KEY) == 1
    with pytest.raises(ConnectionClosed) as closed:
        receive(ws)
    assert closed.value.rcvd is None  # no closing handshake: as a network failure looks
    assert sim.stream.wait_for(lambda: not sim.stream.live(DEMO_APP_KEY), 5)
    assert [c.how for c in sim.stream.connections(DEMO_APP_KEY)] == ["dropped"]


def test_events_wait_for_a_connection(sim: Simulator) -> None:
    """Pushed before any connection (the server not even started): kept until the app connects."""
    event_id = sim.stream.push(DEMO_WINDOW_APP_KEY, "official_account_follow", {"data": []})
    assert sim.stream.pending(DEMO_WINDOW_APP_KEY) == [event_id]


def test_controls_over_http(sim_server: SimulatorServer, ws: ClientConnection) -> None:
    base = sim_server.base_url

    def post(path: str, **body: Any) -> dict[str, Any]:
        answer: dict[str, Any] = requests.post(f"{base}/_sim/stream/{path}", json=body, timeout=5).json()
        return answer

    pushed = post("push", app_key=DEMO_APP_KEY, event_type="user_leave_org", data={"UserId": ["x"]}, event_id="e1")
    assert pushed == {"errcode": 0, "errmsg": "ok", "event_id": "e1"}
    ack(ws, receive(ws))
    assert post("duplicate", app_key=DEMO_APP_KEY, event_id="e1")["errcode"] == 0
    assert receive(ws)["headers"]["eventId"] == "e1"
    assert post("ping", app_key=DEMO_APP_KEY)["connections"] == 1
    assert post("settings", redeliver_after=None, ping_interval=5)["errcode"] == 0
    assert post("settings", ping_interval=-1)["errcode"] == 40035
    assert post("push", app_key="nobody", event_type="x")["errcode"] == 40035
    state = requests.get(f"{base}/_sim/stream/state", params={"app_key": DEMO_APP_KEY}, timeout=5).json()
    assert [a["event_id"] for a in state["acks"]] == ["e1"] and state["pending"] == []
    assert post("drop", app_key=DEMO_APP_KEY)["connections"] == 1


def test_the_open_call_passes_the_app_controls(sim_server: SimulatorServer, sim: Simulator) -> None:
    sim.app_controls.inject(OPEN_CONNECTION, 503, "systemError")
    assert open_connection(sim_server.base_url).status_code == 503
    assert open_connection(sim_server.base_url).status_code == 200
    assert sim.app_controls.calls(OPEN_CONNECTION, DEMO_APP_KEY) == 2
