"""DingTalk's Stream gateway, simulated (dingtalk-oapi.md §7.5), speaking the protocol of the official SDK
(`dingtalk-stream`): an app opens a connection with its clientId/clientSecret and gets an endpoint and a one-time
ticket, then connects a WebSocket to `endpoint?ticket=…`.

Frames are JSON text messages. To the client: `{"specVersion","type","headers","data"}` with `type` EVENT (an event:
`headers` carry `messageId`, `eventId`, `eventType`, `eventBornTime`, `eventCorpId`, `eventUnifiedAppId`; `data` is
the event's JSON as a string) or SYSTEM (`headers.topic` `ping` or `disconnect`). From the client: acknowledgements
`{"code","headers":{"messageId",…},"message","data"}`; a `code` other than 200 is no acknowledgement.

Delivery is at least once, as DingTalk's: an event stays pending for its app until a connection acknowledges it;
every new connection of the app gets the pending events again (new messageId, same eventId), and so does a live one
after `redeliver_after` seconds without an answer. After `disconnect` a connection gets nothing more and is closed
by the gateway after `disconnect_grace` seconds unless the client closed it first.

The WebSocket server (the `websockets` library's asyncio server) runs on its own loop in a daemon thread, started
by the first connection opened, on 127.0.0.1 and a free port. Controls (push, duplicate, drop, disconnect, ping,
acks, connection history) are thread-safe and return once the gateway has acted.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from sandbox.apps import Apps, V1Answer, V1Error

log = logging.getLogger(__name__)

OPEN_CONNECTION = "v1.0/gateway/connections/open"
STREAM_V1_APIS = (OPEN_CONNECTION,)
TICKET_TTL = 90.0  # seconds a ticket may wait for its WebSocket
CONNECT_PATH = "/connect"
EVENT, SYSTEM = "EVENT", "SYSTEM"
PING, DISCONNECT = "ping", "disconnect"
ACK_OK = 200
_CONTROL_TIMEOUT = 5.0


@dataclass(frozen=True)
class Ack:
    """One acknowledgement the gateway received (of an event or a system message)."""

    app_key: str
    connection: int
    message_id: str
    event_id: str | None  # None for a system message's
    code: int
    at: float  # time.monotonic()


@dataclass
class Connection:
    """One WebSocket connection of an app, live or closed; `how` says how it ended."""

    id: int
    app_key: str
    opened_at: float  # time.monotonic()
    closed_at: float | None = None
    how: str = "open"  # open, closed (by the client), dropped, disconnected (by the gateway after `disconnect`)
    accepting: bool = True  # False once `disconnect` was sent: no more deliveries
    ws: ServerConnection | None = field(default=None, repr=False)


@dataclass
class _Pending:
    event_id: str
    event_type: str
    data: str
    corp_id: str
    born_ms: int
    sent_at: float | None = None  # last delivery, time.monotonic()
    message_ids: set[str] = field(default_factory=set)


class StreamGateway:
    """The Stream gateway of every app in `apps` (their appKey/appSecret are the clientId/clientSecret)."""

    def __init__(
        self,
        apps: Apps,
        *,
        redeliver_after: float | None = 30.0,
        ping_interval: float | None = 30.0,
        disconnect_grace: float = 10.0,
    ) -> None:
        self.apps = apps
        self.redeliver_after = redeliver_after
        self.ping_interval = ping_interval
        self.disconnect_grace = disconnect_grace
        self._lock = threading.Lock()
        self._tickets: dict[str, tuple[str, float]] = {}  # ticket -> (app_key, expires at, monotonic)
        self._pending: dict[str, dict[str, _Pending]] = {}  # app_key -> event id -> pending, in push order
        self._delivered: dict[str, dict[str, _Pending]] = {}  # app_key -> event id -> every event ever pushed
        self._connections: list[Connection] = []
        self._acks: list[Ack] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self.on_ack: Callable[[Ack], None] | None = None  # tests: called on the gateway's thread for each ack

    # ---- POST /v1.0/gateway/connections/open --------------------------------------------------------------

    def open(self, body: dict[str, Any]) -> V1Answer:
        """Check the app's credentials and subscriptions; answer the endpoint and a one-time ticket."""
        try:
            app_key = self._check_open(body)
        except V1Error as e:
            return e.answer()
        endpoint = f"ws://127.0.0.1:{self._start()}{CONNECT_PATH}"
        ticket = secrets.token_urlsafe(24)
        with self._lock:
            now = time.monotonic()
            self._tickets = {t: v for t, v in self._tickets.items() if v[1] > now}
            self._tickets[ticket] = (app_key, now + TICKET_TTL)
        return 200, {"endpoint": endpoint, "ticket": ticket}

    def _check_open(self, body: dict[str, Any]) -> str:
        client_id, secret = body.get("clientId"), body.get("clientSecret")
        with self.apps.world.lock:
            app = self.apps.apps.get(client_id) if isinstance(client_id, str) else None
        if app is None or not isinstance(secret, str) or not hmac.compare_digest(secret, app.app_secret):
            raise V1Error(400, "invalidClientIdOrSecret", "无效的clientId或clientSecret")
        subscriptions = body.get("subscriptions")
        if not isinstance(subscriptions, list) or not subscriptions:
            raise V1Error(400, "InvalidParameter.Subscriptions", "subscriptions 不能为空")
        for item in subscriptions:
            if not isinstance(item, dict) or item.get("type") not in (EVENT, "CALLBACK") or not item.get("topic"):
                raise V1Error(400, "InvalidParameter.Subscriptions", "subscriptions 不合法")
        return app.app_key

    # ---- controls -----------------------------------------------------------------------------------------

    def push(
        self,
        app_key: str,
        event_type: str,
        data: dict[str, Any] | list[Any],
        *,
        event_id: str | None = None,
        corp_id: str | None = None,
    ) -> str:
        """Queue an event for the app and deliver it now if the app is connected; return its event id."""
        with self.apps.world.lock:
            app = self.apps.apps.get(app_key)
        if app is None:
            raise ValueError(f"no app {app_key}")
        event = _Pending(
            event_id=event_id or secrets.token_hex(16),
            event_type=event_type,
            data=json.dumps(data, ensure_ascii=False),
            corp_id=corp_id or app.corpid,
            born_ms=int(time.time() * 1000),
        )
        with self._lock:
            self._pending.setdefault(app_key, {})[event.event_id] = event
            self._delivered.setdefault(app_key, {})[event.event_id] = event
        self._call(self._send_event(app_key, event))
        return event.event_id

    def duplicate(self, app_key: str, event_id: str) -> None:
        """Deliver an event again, acknowledged or not, as DingTalk's at-least-once delivery may."""
        with self._lock:
            event = self._delivered.get(app_key, {}).get(event_id)
        if event is None:
            raise ValueError(f"no event {event_id} of {app_key}")
        self._call(self._send_event(app_key, event))

    def drop(self, app_key: str) -> int:
        """Cut the app's live connections without a closing handshake (a network failure); return how many."""
        return int(self._call(self._drop(app_key)) or 0)

    def disconnect(self, app_key: str) -> int:
        """Send `disconnect` on the app's live connections (DingTalk moving it elsewhere); return how many."""
        return int(self._call(self._disconnect(app_key)) or 0)

    def ping(self, app_key: str) -> int:
        """Send a SYSTEM ping on the app's live connections; return how many."""
        return int(self._call(self._ping(app_key)) or 0)

    def acks(self, app_key: str | None = None, *, events_only: bool = True) -> list[Ack]:
        """The acknowledgements received (of events only, unless told otherwise), oldest first."""
        with self._lock:
            return [
                a for a in self._acks if app_key in (None, a.app_key) and (a.event_id is not None or not events_only)
            ]

    def pending(self, app_key: str) -> list[str]:
        """Event ids not yet acknowledged, in push order."""
        with self._lock:
            return list(self._pending.get(app_key, {}))

    def connections(self, app_key: str | None = None) -> list[Connection]:
        """Every connection so far (live and closed), oldest first."""
        with self._lock:
            return [c for c in self._connections if app_key in (None, c.app_key)]

    def live(self, app_key: str) -> list[Connection]:
        with self._lock:
            return [c for c in self._connections if c.app_key == app_key and c.closed_at is None]

    def wait_for(self, check: Callable[[], bool], timeout: float) -> bool:
        """Wait until check() (called without the lock) holds, at most `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if check():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    def stop(self) -> None:
        """Close every connection and stop the server thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(_CONTROL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_CONTROL_TIMEOUT)
        self._loop = self._thread = self._server = None

    # ---- the server thread --------------------------------------------------------------------------------

    def _start(self) -> int:
        """Start the WebSocket server once; return its port."""
        with self._lock:
            if self._thread is not None:
                return self._port
            started: Future[int] = Future()
            loop = asyncio.new_event_loop()

            def run() -> None:
                asyncio.set_event_loop(loop)
                try:
                    server = loop.run_until_complete(self._listen())
                except BaseException as e:  # the caller hears of it
                    started.set_exception(e)
                    loop.close()
                    return
                self._server = server
                started.set_result(next(iter(server.sockets)).getsockname()[1])
                loop.create_task(self._timers())
                loop.run_forever()
                loop.close()

            thread = threading.Thread(target=run, name="dingtalk-stream-gateway", daemon=True)
            thread.start()
            self._port = started.result(_CONTROL_TIMEOUT)
            self._loop, self._thread = loop, thread
            return self._port

    async def _listen(self) -> Server:
        return await serve(self._serve, "127.0.0.1", 0, process_request=self._check_ticket, ping_interval=20)

    def _call(self, coro: Any) -> Any:
        """Run a coroutine on the server's loop and wait for it; nothing to do when the server never started."""
        loop = self._loop
        if loop is None:
            coro.close()
            return None
        return asyncio.run_coroutine_threadsafe(coro, loop).result(_CONTROL_TIMEOUT)

    def _check_ticket(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        ticket = (parse_qs(parts.query).get("ticket") or [""])[0]
        with self._lock:
            entry = self._tickets.pop(ticket, None)  # one use only
        if parts.path != CONNECT_PATH or entry is None or entry[1] < time.monotonic():
            return connection.respond(HTTPStatus.UNAUTHORIZED, "invalid or expired ticket\n")
        connection.app_key = entry[0]  # type: ignore[attr-defined]
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        app_key: str = ws.app_key  # type: ignore[attr-defined]
        with self._changed:
            conn = Connection(next(self._ids), app_key, time.monotonic(), ws=ws)
            self._connections.append(conn)
            self._changed.notify_all()
        try:
            await self._deliver_pending(app_key)
            async for raw in ws:
                self._on_frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._changed:
                conn.closed_at = time.monotonic()
                if conn.how == "open":
                    conn.how = "closed"
                conn.ws = None
                self._changed.notify_all()

    def _on_frame(self, conn: Connection, raw: str | bytes) -> None:
        try:
            frame = json.loads(raw)
            message_id = str(frame["headers"]["messageId"])
            code = int(frame.get("code", 0))
        except (ValueError, KeyError, TypeError):
            log.warning("stream gateway: a frame that is no acknowledgement from connection %s", conn.id)
            return
        with self._changed:
            events = self._pending.get(conn.app_key, {})
            event_id = next((e.event_id for e in events.values() if message_id in e.message_ids), None)
            if event_id is None:  # an acknowledgement of an event no longer pending, or of a system message
                known = self._delivered.get(conn.app_key, {}).values()
                event_id = next((e.event_id for e in known if message_id in e.message_ids), None)
            elif code == ACK_OK:
                del events[event_id]
            ack = Ack(conn.app_key, conn.id, message_id, event_id, code, time.monotonic())
            self._acks.append(ack)
            self._changed.notify_all()
        if self.on_ack is not None:
            self.on_ack(ack)

    def _target(self, app_key: str) -> Connection | None:
        """The connection a new delivery goes to: the app's newest accepting one."""
        with self._lock:
            live = [c for c in self._connections if c.app_key == app_key and c.closed_at is None and c.accepting]
        return live[-1] if live else None

    async def _deliver_pending(self, app_key: str) -> None:
        with self._lock:
            events = list(self._pending.get(app_key, {}).values())
        for event in events:
            await self._send_event(app_key, event)

    async def _send_event(self, app_key: str, event: _Pending) -> None:
        conn = self._target(app_key)
        if conn is None or conn.ws is None:
            return
        message_id = secrets.token_hex(12)
        with self._lock:
            event.message_ids.add(message_id)
            event.sent_at = time.monotonic()
        headers = {
            "appId": app_key,
            "connectionId": str(conn.id),
            "contentType": "application/json",
            "messageId": message_id,
            "time": str(int(time.time() * 1000)),
            "topic": "*",
            "eventId": event.event_id,
            "eventBornTime": str(event.born_ms),
            "eventCorpId": event.corp_id,
            "eventType": event.event_type,
            "eventUnifiedAppId": app_key,
        }
        await self._send(conn, {"specVersion": "1.0", "type": EVENT, "headers": headers, "data": event.data})

    async def _send_system(self, conn: Connection, topic: str) -> None:
        headers = {
            "connectionId": str(conn.id),
            "contentType": "application/json",
            "messageId": secrets.token_hex(12),
            "time": str(int(time.time() * 1000)),
            "topic": topic,
        }
        data = json.dumps({"opaque": secrets.token_hex(8)} if topic == PING else {"reason": "gateway maintenance"})
        await self._send(conn, {"specVersion": "1.0", "type": SYSTEM, "headers": headers, "data": data})

    async def _send(self, conn: Connection, frame: dict[str, Any]) -> None:
        ws = conn.ws
        if ws is None:
            return
        try:
            await ws.send(json.dumps(frame, ensure_ascii=False))
        except ConnectionClosed:
            pass  # the connection's own task records how it ended

    async def _drop(self, app_key: str) -> int:
        dropped = 0
        for conn in self.live(app_key):
            with self._changed:
                conn.how = "dropped"
            if conn.ws is not None:
                conn.ws.transport.abort()
                dropped += 1
        return dropped

    async def _disconnect(self, app_key: str) -> int:
        count = 0
        for conn in self.live(app_key):
            with self._lock:
                conn.accepting = False
            await self._send_system(conn, DISCONNECT)
            asyncio.get_running_loop().call_later(self.disconnect_grace, self._close_after_disconnect, conn)
            count += 1
        return count

    def _close_after_disconnect(self, conn: Connection) -> None:
        if conn.closed_at is None and conn.ws is not None:
            with self._lock:
                conn.how = "disconnected"
            asyncio.get_running_loop().create_task(conn.ws.close())

    async def _ping(self, app_key: str) -> int:
        live = [c for c in self.live(app_key) if c.accepting]
        for conn in live:
            await self._send_system(conn, PING)
        return len(live)

    async def _timers(self) -> None:
        """Redeliver what waited too long for an acknowledgement, and ping every connection now and then."""
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            if self.redeliver_after is not None:
                with self._lock:
                    late = [
                        (app_key, e)
                        for app_key, events in self._pending.items()
                        for e in events.values()
                        if e.sent_at is not None and now - e.sent_at >= self.redeliver_after
                    ]
                for app_key, event in late:
                    await self._send_event(app_key, event)
            if self.ping_interval is not None and now - last_ping >= self.ping_interval:
                last_ping = now
                for app_key in {c.app_key for c in self.connections() if c.closed_at is None}:
                    await self._ping(app_key)

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close()
            await server.wait_closed()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                task.cancel()
