"""Stream mode (dingtalk-oapi.md §7.5): one current-generation app's event connection to DingTalk, built on the
official SDK (`dingtalk-stream`).

From the SDK: the client class and its `OPEN_CONNECTION_API`, the credential, the frames (`EventMessage`,
`SystemMessage`, `AckMessage`) and the handler protocol (`EventHandler.process` returns the ack's status). Where the
SDK is known to misbehave, this module does its own, and says why at each place:

- opening a connection: the SDK's `requests.post` has no timeout (a silent gateway hangs the process) and finds the
  local IP by "connecting" a socket to 8.8.8.8; here it has a timeout and leaves `localIp` out (§7.5 does not ask
  for it);
- the connection loop: the SDK's `start()` sleeps a fixed 3 or 10 s between attempts, processes each message on a
  task of its own (a follow and a later unfollow could be recorded out of order), has no way to stop, and its
  `except websockets.exceptions.ConnectionClosedError` fails with websockets >= 14, where that submodule is no
  longer an attribute of the package until something imports it (open-dingtalk/dingtalk-stream-sdk-python#65);
  here: exponential backoff with jitter between `backoff_min` and `backoff_max`, one message at a time per
  connection, a stop event, and the exceptions imported from where they live.

At least once, recorded once: an event is acknowledged only after `record` (run on a worker thread, so pings and
other apps' connections go on meanwhile) returned. When it raises RecordingUnavailable (the store is down), nothing
is acknowledged, the connection is closed so that DingTalk delivers the event again to the next one, and the app
reconnects after a backoff, once `ready()` says the store answers again. When it raises anything else, that event
alone is left unacknowledged (DingTalk delivers it again later) and the connection goes on.

Nothing here logs a secret, a ticket or an event's payload: the corpid, the app key, event types and ids only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote_plus

import requests
from dingtalk_stream import AckMessage, Credential, DingTalkStreamClient, EventHandler, EventMessage, SystemMessage
from dingtalk_stream.version import VERSION_STRING
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from oapi.errcodes import classify_v1
from oapi.errors import OapiError, UpstreamUnavailable
from oapi.metrics import STREAM_ACKS, STREAM_CONNECTED, STREAM_EVENTS, STREAM_RECONNECTS

log = logging.getLogger(__name__)

OPEN_CONNECTION = "v1.0/gateway/connections/open"

# What an app's connection is doing, as the stream process reports it (corp/stream_state.py).
STARTING, CONNECTING, CONNECTED, BACKOFF, STOPPED = "starting", "connecting", "connected", "backoff", "stopped"

# Stream payloads spell fields in lowerCamel where HTTP pushes use UpperCamel; the event log and the effects read the
# push's spelling (corp/events.py), so both receivers' events look alike there.
_PUSH_SPELLING = (
    ("userId", "UserId"),
    ("deptId", "DeptId"),
    ("chatId", "ChatId"),
    ("authCorpId", "AuthCorpId"),
    ("corpId", "CorpId"),
    ("timeStamp", "TimeStamp"),
)


class CurrentApp(Protocol):
    """A registration of a current-generation app (oapi/apps.py's `CurrentApp`)."""

    @property
    def corpid(self) -> str: ...

    @property
    def app_key(self) -> str: ...

    @property
    def app_secret(self) -> str: ...


class RecordingUnavailable(Exception):
    """Raised by `record` when nothing can be recorded now (the store is down): the event is not acknowledged, and
    the connection is closed so that DingTalk delivers it again once the app has reconnected."""


class NotRecorded(Exception):
    """The store could not record an event: no acknowledgement; close the connection, back off, reconnect."""


class Unacknowledged(Exception):
    """`record` failed on this event alone (a bug, an event it cannot read): no acknowledgement, so DingTalk
    delivers it again later, but the connection goes on with the next events."""


@dataclass(frozen=True)
class StreamSettings:
    """Timeouts and the reconnect backoff (seconds)."""

    timeout: float = 10.0  # opening: the HTTP call, and the WebSocket handshake
    backoff_min: float = 1.0
    backoff_max: float = 60.0
    ping_interval: float = 20.0  # WebSocket pings: a half-open TCP connection is noticed within two of these
    close_timeout: float = 5.0


@dataclass(frozen=True)
class StreamEvent:
    """One event as Stream mode delivered it: the EVENT frame's headers and its parsed `data`."""

    event_id: str | None
    type: str
    corp_id: str | None
    born_ms: int | None
    data: Any

    @classmethod
    def from_message(cls, message: EventMessage) -> StreamEvent:
        headers = message.headers
        return cls(
            event_id=headers.event_id if isinstance(headers.event_id, str) and headers.event_id else None,
            type=str(headers.event_type or ""),
            corp_id=headers.event_corp_id if isinstance(headers.event_corp_id, str) else None,
            born_ms=headers.event_born_time if isinstance(headers.event_born_time, int) else None,
            data=message.data,
        )

    def as_event(self) -> dict[str, Any]:
        """The event as an HTTP push's decrypted JSON would carry it: `EventType`, `EventId` (the header's
        eventId: the event's identity across redeliveries and both receivers), `TimeStamp`, `CorpId`, the ids."""
        data = self.data
        event: dict[str, Any] = dict(data) if isinstance(data, dict) else {"data": data}
        for lower, upper in _PUSH_SPELLING:
            if upper not in event and lower in event:
                event[upper] = event[lower]
        if self.type:
            event["EventType"] = self.type
        if self.event_id:
            event["EventId"] = self.event_id
        if "TimeStamp" not in event and self.born_ms:
            event["TimeStamp"] = str(self.born_ms)
        if "CorpId" not in event and self.corp_id:
            event["CorpId"] = self.corp_id
        return event


@dataclass
class StreamStatus:
    """What one app's connection is doing, for /healthz and the logs (times: unix seconds)."""

    corpid: str
    app_key: str
    state: str = STARTING
    since: float = field(default_factory=time.time)
    connected_at: float | None = None
    last_event: float | None = None
    last_ack: float | None = None
    events: int = 0
    acks: int = 0
    reconnects: int = 0
    last_error: str | None = None

    def public(self) -> dict[str, Any]:
        """Everything but nothing secret (there is nothing secret here)."""
        return {
            "corpid": self.corpid,
            "app_key": self.app_key,
            "state": self.state,
            "since": round(self.since, 3),
            "connected_at": None if self.connected_at is None else round(self.connected_at, 3),
            "last_event": None if self.last_event is None else round(self.last_event, 3),
            "last_ack": None if self.last_ack is None else round(self.last_ack, 3),
            "events": self.events,
            "acks": self.acks,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
        }


class Backoff:
    """Delays between connection attempts: `low` after a connection that worked, doubling with each failure up
    to `high`, each stretched by up to a quarter at random (so that many apps do not reconnect in lockstep after a
    restart) and never outside [low, high]."""

    def __init__(self, low: float, high: float, *, rng: random.Random | None = None) -> None:
        self.low = max(0.0, low)
        self.high = max(self.low, high)
        self.failures = 0
        self._rng = rng or random.Random()

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1

    def delay(self) -> float:
        base = self.low * 2 ** min(self.failures, 32)
        return min(self.high, base * (1 + self._rng.random() / 4))


class _Recorder(EventHandler):
    """The SDK's event handler: record the event (on a worker thread), then let the SDK acknowledge it."""

    def __init__(self, record: Callable[[StreamEvent], str], corpid: str) -> None:
        super().__init__()
        self._record = record
        self._corpid = corpid

    async def process(self, event: EventMessage) -> tuple[int, str]:
        stream_event = StreamEvent.from_message(event)
        try:
            outcome = await asyncio.to_thread(self._record, stream_event)
        except RecordingUnavailable as e:
            STREAM_EVENTS.labels(self._corpid, "failed").inc()
            raise NotRecorded(str(e) or type(e).__name__) from e
        except Exception as e:
            # The type only: an exception's text may quote the event.
            STREAM_EVENTS.labels(self._corpid, "error").inc()
            log.error(
                "stream corpid=%s event type=%s id=%s: recording failed (%s); not acknowledged",
                self._corpid,
                stream_event.type or "-",
                stream_event.event_id or "-",
                type(e).__name__,
            )
            raise Unacknowledged(type(e).__name__) from e
        STREAM_EVENTS.labels(self._corpid, outcome).inc()
        log.info(
            "stream corpid=%s event type=%s id=%s outcome=%s",
            self._corpid,
            stream_event.type or "-",
            stream_event.event_id or "-",
            outcome,
        )
        return AckMessage.STATUS_OK, "OK"


class StreamClient(DingTalkStreamClient):  # type: ignore[misc]
    """One app's Stream connection: open, receive, record, acknowledge, and again after any end, until stopped.

    `record(event)` runs on a worker thread and returns an outcome label (for the metrics); it raises
    RecordingUnavailable when nothing can be recorded now, anything else when this event was not recorded.
    `ready()` (also on a worker thread) says whether recording can work now: no connection is opened while it is
    False. `on_change()` is called (on the loop) whenever `status` changes state.
    """

    websocket: ClientConnection | None  # the SDK's name for the live connection

    def __init__(
        self,
        app: CurrentApp,
        *,
        openapi_base: str,
        record: Callable[[StreamEvent], str],
        ready: Callable[[], bool] | None = None,
        settings: StreamSettings | None = None,
        on_change: Callable[[], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(Credential(app.app_key, app.app_secret), logger=log)
        # An instance attribute over the SDK's class attribute: every app of this process, and a test's simulator,
        # may have a base of its own. The SDK's own open_connection reads the class attribute; ours reads this.
        self.OPEN_CONNECTION_API = f"{openapi_base.rstrip('/')}/{OPEN_CONNECTION}"
        self.app = app
        self.settings = settings or StreamSettings()
        self.status = StreamStatus(app.corpid, app.app_key)
        self.backoff = Backoff(self.settings.backoff_min, self.settings.backoff_max, rng=rng)
        self._ready = ready
        self._on_change = on_change
        self._session = requests.Session()
        self.register_all_event_handler(_Recorder(record, app.corpid))

    # ---- opening ------------------------------------------------------------------------------------------

    def open_connection(self) -> dict[str, str]:
        """Ask DingTalk for an endpoint and a one-time ticket (the SDK's call, with a timeout and no local-IP probe).

        Raises oapi's typed errors: UpstreamError for refused credentials, UpstreamUnavailable for the rest.
        """
        body = {
            "clientId": self.credential.client_id,
            "clientSecret": self.credential.client_secret,
            "subscriptions": [{"type": EventMessage.TYPE, "topic": "*"}],
            "ua": f"dtgw dingtalk-sdk-python/v{VERSION_STRING}",
        }
        try:
            url, timeout = self.OPEN_CONNECTION_API, self.settings.timeout
            response = self._session.post(url, json=body, timeout=timeout, headers={"Accept": "application/json"})
            answer = response.json()
        except (requests.RequestException, ValueError) as e:
            raise UpstreamUnavailable(f"DingTalk's Stream gateway did not answer ({type(e).__name__})") from e
        if not isinstance(answer, dict):
            raise UpstreamUnavailable(f"DingTalk's Stream gateway answered HTTP {response.status_code} without JSON")
        error = classify_v1(OPEN_CONNECTION, response.status_code, answer, token_fetch=True)
        if error is not None:
            raise error
        endpoint, ticket = answer.get("endpoint"), answer.get("ticket")
        if not (isinstance(endpoint, str) and endpoint and isinstance(ticket, str) and ticket):
            raise UpstreamUnavailable("DingTalk's Stream gateway answered without an endpoint and a ticket")
        return {"endpoint": endpoint, "ticket": ticket}

    # ---- the loop -----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until `stop` is set; then close the connection (after the message in hand) and return."""
        self.pre_start()
        try:
            while not stop.is_set():
                reason = await self._attempt(stop)
                if stop.is_set():
                    break
                self.status.reconnects += 1
                STREAM_RECONNECTS.labels(self.app.corpid, reason).inc()
                delay = self.backoff.delay()
                self._set_state(BACKOFF)
                app = self.app
                log.info("stream corpid=%s app=%s: %s; reconnecting in %.2f s", app.corpid, app.app_key, reason, delay)
                await _sleep_unless(stop, delay)
        finally:
            self._session.close()
            STREAM_CONNECTED.labels(self.app.corpid).set(0)
            self._set_state(STOPPED)

    async def _attempt(self, stop: asyncio.Event) -> str:
        """One connection, from opening to its end; return why it ended (a metrics label)."""
        self._set_state(CONNECTING)
        if self._ready is not None and not await asyncio.to_thread(self._ready):
            self.backoff.failed()
            self.status.last_error = "store unavailable"
            return "store_down"
        try:
            answer = await asyncio.to_thread(self.open_connection)
        except OapiError as e:
            self.backoff.failed()
            self.status.last_error = f"open: {e.errcode or type(e).__name__}"
            log.warning(
                "stream corpid=%s app=%s: opening failed (%s %s)",
                self.app.corpid,
                self.app.app_key,
                type(e).__name__,
                e.errcode or "",
            )
            return "open_failed"
        uri = f"{answer['endpoint']}?ticket={quote_plus(answer['ticket'])}"
        try:
            ws = await connect(
                uri,
                open_timeout=self.settings.timeout,
                ping_interval=self.settings.ping_interval,
                ping_timeout=self.settings.ping_interval,
                close_timeout=self.settings.close_timeout,
                user_agent_header=f"dtgw dingtalk-sdk-python/v{VERSION_STRING}",
            )
        except (OSError, InvalidHandshake, TimeoutError) as e:
            self.backoff.failed()
            # The type only: some of these exceptions quote the URI, and the URI carries the ticket.
            self.status.last_error = f"connect: {type(e).__name__}"
            log.warning(
                "stream corpid=%s app=%s: connecting failed (%s)", self.app.corpid, self.app.app_key, type(e).__name__
            )
            return "connect_failed"
        self.websocket = ws
        self.backoff.succeeded()
        self.status.connected_at = time.time()
        self.status.last_error = None
        STREAM_CONNECTED.labels(self.app.corpid).set(1)
        self._set_state(CONNECTED)
        log.info("stream corpid=%s app=%s: connected", self.app.corpid, self.app.app_key)
        try:
            return await self._receive(ws, stop)
        finally:
            STREAM_CONNECTED.labels(self.app.corpid).set(0)
            self.websocket = None
            await ws.close()

    async def _receive(self, ws: ClientConnection, stop: asyncio.Event) -> str:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiving = asyncio.ensure_future(ws.recv())
                await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not receiving.done():
                    receiving.cancel()  # safe with websockets' asyncio API: no message is lost
                    return "stopped"
                try:
                    raw = receiving.result()
                except ConnectionClosed:
                    return "dropped"
                try:
                    # Not interrupted by `stop`: the message in hand is recorded and acknowledged first.
                    if await self.route_message(json.loads(raw)) == self.TAG_DISCONNECT:
                        return "disconnect"
                except NotRecorded as e:
                    self.backoff.failed()
                    self.status.last_error = f"record: {e}"
                    log.warning(
                        "stream corpid=%s app=%s: an event was not recorded (%s); not acknowledged, reconnecting",
                        self.app.corpid,
                        self.app.app_key,
                        e,
                    )
                    return "record_failed"
                except ConnectionClosed:
                    return "dropped"
        finally:
            stopping.cancel()

    async def route_message(self, json_message: dict[str, Any]) -> str:
        """Answer one frame: acknowledge a system message, record then acknowledge an event.

        The SDK's route_message does the same but logs every ping as an "unknown topic" with the whole frame, and
        sends nothing for a frame it cannot parse (DingTalk would deliver it again forever).
        """
        kind = json_message.get("type", "") if isinstance(json_message, dict) else ""
        if kind == SystemMessage.TYPE:
            system = SystemMessage.from_dict(json_message)
            await self._send(await self.system_handler.raw_process(system))
            return self.TAG_DISCONNECT if system.headers.topic == SystemMessage.TOPIC_DISCONNECT else ""
        if kind == EventMessage.TYPE:
            try:
                event = EventMessage.from_dict(json_message)
            except (ValueError, TypeError):
                # Nothing to record, ever: refuse it, so that it is neither lost silently nor retried forever here.
                STREAM_EVENTS.labels(self.app.corpid, "malformed").inc()
                log.warning("stream corpid=%s: an EVENT frame whose data is not JSON; refused", self.app.corpid)
                await self._send(_refusal(json_message, AckMessage.STATUS_BAD_REQUEST))
                return ""
            self.status.last_event = time.time()
            self.status.events += 1
            try:
                ack = await self.event_handler.raw_process(event)  # NotRecorded goes up: close, reconnect
            except Unacknowledged as e:
                self.status.last_error = f"record: {e}"
                return ""
            await self._send(ack)
            self.status.acks += 1
            self.status.last_ack = time.time()
            STREAM_ACKS.labels(self.app.corpid).inc()
            return ""
        # Only events are subscribed; anything else is answered "not implemented", as the SDK does.
        await self._send(_refusal(json_message, AckMessage.STATUS_NOT_IMPLEMENT))
        return ""

    async def _send(self, ack: AckMessage) -> None:
        ws = self.websocket
        if ws is None:
            raise ConnectionClosed(None, None)
        await ws.send(json.dumps(ack.to_dict()))

    def _set_state(self, state: str) -> None:
        if self.status.state != state:
            self.status.state = state
            self.status.since = time.time()
            if self._on_change is not None:
                self._on_change()


def _refusal(frame: Any, code: int) -> AckMessage:
    ack = AckMessage()
    ack.code = code
    headers = frame.get("headers") if isinstance(frame, dict) else None
    ack.headers.message_id = headers.get("messageId") if isinstance(headers, dict) else None
    ack.headers.content_type = "application/json"
    ack.message = "refused"
    return ack


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleep `seconds`, or less when `stop` is set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
