"""The Stream mode receiver (`flask events stream`): one long-lived process, one connection per app
(oapi/stream.StreamClient), each event recorded and applied as the HTTP receiver does (corp/intake.py) before it is
acknowledged.

Which apps: the registered corps of the current kinds (service-window, internal) named on the command line, or all
of them. The registry is read again every GATEWAY_STREAM_RESCAN seconds: a corp added gets a connection, a replaced
registration (new appSecret) a new one, a removed corp loses its own. Kind channel has no Stream mode (its pushes
come over HTTP only).

The process reports each connection's state to the store (corp/stream_state.py) for /healthz, and stops cleanly on
SIGTERM or SIGINT: the event in hand is recorded and acknowledged, then every connection closes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from corp.events import NotDurable
from corp.intake import record_and_apply
from corp.registry import Corp
from corp.runtime import Runtime
from corp.stream_state import HEARTBEAT, STATE_TTL, StreamStates
from gateway.errors import UnknownCorp
from kit.errors import Failure
from oapi.stream import RecordingUnavailable, StreamClient, StreamEvent, StreamSettings

log = logging.getLogger(__name__)


class NotStreamable(Failure):
    """A corp named for Stream mode is of kind channel, which has none."""

    default_hint = "Stream mode is for the current kinds (service-window, internal); kind channel pushes over HTTP."


def settings_of(rt: Runtime) -> StreamSettings:
    """The Stream client's settings from the gateway's (GATEWAY_STREAM_*)."""
    s = rt.settings
    return StreamSettings(timeout=s.stream_timeout, backoff_min=s.stream_backoff_min, backoff_max=s.stream_backoff_max)


def stream_corps(rt: Runtime, corpids: Iterable[str] = (), *, strict: bool = False) -> list[Corp]:
    """The registrations to connect: those named, else every one of a current kind.

    `strict` (at start): a named corp that is not registered (UnknownCorp) or of kind channel (NotStreamable) is an
    error; later it is left out, as a removed corp is.
    """
    named = list(dict.fromkeys(corpids))
    found = []
    for corpid in named or rt.registry.corpids():
        try:
            corp = rt.registry.get(corpid)
        except UnknownCorp:
            if strict:
                raise
            continue  # removed meanwhile
        if corp.current:
            found.append(corp)
        elif strict and named:
            raise NotStreamable(f"Corp {corp.corpid} is of kind {corp.kind}, which has no Stream mode")
    return found


@dataclass
class _Running:
    corp: Corp
    client: StreamClient
    stop: asyncio.Event
    task: asyncio.Task[None]


class StreamRunner:
    """Keeps one StreamClient per app running until stopped."""

    def __init__(
        self,
        rt: Runtime,
        corpids: Iterable[str] = (),
        *,
        settings: StreamSettings | None = None,
        rescan: float | None = None,
        heartbeat: float = HEARTBEAT,
        state_ttl: int = STATE_TTL,
    ) -> None:
        self.rt = rt
        self.corpids = tuple(dict.fromkeys(corpids))
        self.settings = settings or settings_of(rt)
        self.rescan = rt.settings.stream_rescan if rescan is None else rescan
        self.heartbeat = heartbeat
        self.states = StreamStates(rt.store, ttl=state_ttl)
        self.running: dict[str, _Running] = {}
        self._dirty: asyncio.Event | None = None
        self._store_failing = False
        self._started = False  # the registry was read once
        self._idle = False  # said that there is nothing to connect

    # ---- what each client calls (on worker threads) --------------------------------------------------------

    def _recorder(self, corpid: str) -> Callable[[StreamEvent], str]:
        def record(event: StreamEvent) -> str:
            try:
                return record_and_apply(self.rt, corpid, event.as_event(), source="stream").outcome
            # The store, not the event: every event would fail alike (NotDurable: no replica took it in time).
            except (redis.RedisError, NotDurable) as e:
                raise RecordingUnavailable(f"store unavailable ({type(e).__name__})") from e

        return record

    def store_ready(self) -> bool:
        """Whether the store answers: no connection is opened while it does not (its events could not be recorded)."""
        try:
            return bool(self.rt.store.ping())
        except redis.RedisError:
            return False

    # ---- the process ---------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Connect every app, follow the registry, report states; return once `stop` is set and all are closed."""
        self._dirty = asyncio.Event()
        reporter = asyncio.ensure_future(self._report(stop))
        try:
            while not stop.is_set():
                await self._sync()
                # Until the registry was read once (the store down at start), try again sooner.
                wait = self.rescan if self._started else min(self.rescan, self.settings.backoff_max, 5.0)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except TimeoutError:
                    pass
        finally:
            for running in self.running.values():
                running.stop.set()
            await asyncio.gather(*(r.task for r in self.running.values()), return_exceptions=True)
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
            await self._write_states()  # the last word: every app `stopped`
            log.info("stream: stopped (%d app(s) disconnected)", len(self.running))

    async def _sync(self) -> None:
        """Start, replace or stop clients to match the registry."""
        try:
            # The first read is strict: a corp named on the command line that cannot be served is said at once.
            corps = await asyncio.to_thread(stream_corps, self.rt, self.corpids, strict=not self._started)
        except redis.RedisError as e:
            log.warning("stream: the registry could not be read (%s); trying again later", type(e).__name__)
            return
        self._started = True
        wanted = {c.corpid: c for c in corps}
        for corpid, running in list(self.running.items()):
            corp = wanted.get(corpid)
            if corp is None or corp.registration != running.corp.registration:
                running.stop.set()
                await asyncio.gather(running.task, return_exceptions=True)
                del self.running[corpid]
                if corp is None:
                    log.info("stream corpid=%s: no longer registered for Stream mode; disconnected", corpid)
                    await self._forget(corpid)
        for corpid, corp in wanted.items():
            if corpid not in self.running:
                self._start(corp)
        if not self.running and not self._idle:
            log.warning("stream: no registered corp of kind service-window or internal to connect (yet)")
        self._idle = not self.running

    def _start(self, corp: Corp) -> None:
        client = StreamClient(
            corp,
            openapi_base=self.rt.settings.dingtalk_openapi_base,
            record=self._recorder(corp.corpid),
            ready=self.store_ready,
            settings=self.settings,
            on_change=self._changed,
        )
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        self.running[corp.corpid] = _Running(corp, client, stop, task)
        log.info("stream corpid=%s kind=%s app=%s: starting", corp.corpid, corp.kind, corp.app_key)

    def _changed(self) -> None:
        if self._dirty is not None:
            self._dirty.set()

    async def _report(self, stop: asyncio.Event) -> None:
        """Write every app's state each `heartbeat` seconds, and soon after any change."""
        dirty = self._dirty
        assert dirty is not None
        while not stop.is_set():
            dirty.clear()
            await self._write_states()
            try:
                await asyncio.wait_for(dirty.wait(), timeout=self.heartbeat)
            except TimeoutError:
                pass
            await asyncio.sleep(0.05)  # coalesce a burst of changes into one write

    async def _write_states(self) -> None:
        reports = [r.client.status.public() for r in self.running.values()]
        try:
            await asyncio.to_thread(self.states.write, reports)
        except redis.RedisError as e:
            if not self._store_failing:
                log.warning("stream: states not reported (%s); the store is unavailable", type(e).__name__)
            self._store_failing = True
        else:
            self._store_failing = False

    async def _forget(self, corpid: str) -> None:
        try:
            await asyncio.to_thread(self.states.forget, [corpid])
        except redis.RedisError:
            pass  # its report expires by itself


def run_stream(runner: StreamRunner) -> None:
    """Run `runner` until SIGTERM or SIGINT (Ctrl-C), then stop it cleanly."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await runner.run(stop)

    asyncio.run(main())
