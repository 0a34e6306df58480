"""Steer the current-generation APIs (`sandbox.apps`) from tests: a per-app-and-API QPS limit, injected v1.0 errors
(429 systemBusy, 403 IpNotInWhiteList, ...) and the call counts. `screen` decides, before `sandbox.apps` answers,
whether a call meets one of them.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from sandbox.apps import APP_APIS, GET_USER_INFO, V1_APIS
from sandbox.controls import MAX_LATENCY
from sandbox.followers import FOLLOWER_V1_APIS, GET_BY_UNIONID
from sandbox.model import SimulatorError, World
from sandbox.stream import STREAM_V1_APIS

QPS_LIMITED = "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
# What a blocked egress IP gets instead of JSON (§7.1): a gateway's error page.
IP_BLOCK_PAGE = "<html><head><title>403 Forbidden</title></head><body><h1>访问被拒绝</h1></body></html>"
SYSTEM_BUSY = "systemBusy"

ALL_V1_APIS = (*V1_APIS, *FOLLOWER_V1_APIS, *STREAM_V1_APIS)
TOPAPIS = (GET_USER_INFO, GET_BY_UNIONID)
ALL_APIS = (*APP_APIS, *FOLLOWER_V1_APIS, GET_BY_UNIONID, *STREAM_V1_APIS)


@dataclass
class _Injected:
    status: int
    code: str
    message: str
    remaining: int
    app_key: str | None
    sub_code: str | None = None  # topapi only: errcode 88 carries the real reason here (§7.1)
    raw: dict[str, Any] | str | None = None  # answered as it is: the egress-IP block's JSON, or an HTML page

    def body(self, api: str) -> dict[str, Any] | str:
        if self.raw is not None:
            return self.raw
        if api in TOPAPIS:  # topapi keeps the oapi style: HTTP 200 with an errcode
            body: dict[str, Any] = {"errcode": int(self.code), "errmsg": self.message}
            if self.sub_code is not None:
                body.update(sub_code=self.sub_code, sub_msg=self.message)
            return body
        return _v1_body(self.code, self.message)


class AppControls:
    """The controls in front of the current-generation APIs; every method takes the world's lock or says it is held."""

    def __init__(self, world: World) -> None:
        self._world = world
        self._qps: dict[tuple[str, str | None], int] = {}  # (api, appKey or None for every app) -> limit
        self._windows: dict[tuple[str, str | None], deque[float]] = {}
        self._injected: dict[str, deque[_Injected]] = {}
        self._calls: Counter[tuple[str, str | None]] = Counter()
        self._latency: dict[str, float] = {}

    def set_qps_limit(self, api: str, limit: int | None, *, app_key: str | None = None) -> None:
        """Allow at most `limit` calls of api per second per app (for app_key, or every app); None lifts it."""
        _check_api(api, ALL_APIS)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise SimulatorError(40035, "limit must be a positive whole number or null")
        with self._world.lock:
            if limit is None:
                self._qps.pop((api, app_key), None)
            else:
                self._qps[(api, app_key)] = limit

    def inject(
        self, api: str, status: int, code: str, *, times: int = 1, message: str = "injected", app_key: str | None = None
    ) -> None:
        """Make the next `times` calls of a v1.0 api (by app_key, or any app) answer this error instead."""
        _check_api(api, ALL_V1_APIS)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise SimulatorError(40035, "status must be an HTTP error status")
        if times < 1 or not code:
            raise SimulatorError(40035, "times must be at least 1 and code non-empty")
        with self._world.lock:
            self._injected.setdefault(api, deque()).append(_Injected(status, code, message, times, app_key))

    def inject_topapi(
        self,
        api: str,
        errcode: int,
        *,
        sub_code: str | None = None,
        times: int = 1,
        message: str = "injected",
        app_key: str | None = None,
    ) -> None:
        """Make the next `times` calls of a topapi api answer errcode (HTTP 200), e.g. 88 with sub_code "40014"."""
        _check_api(api, TOPAPIS)
        if isinstance(errcode, bool) or not isinstance(errcode, int) or errcode == 0 or times < 1:
            raise SimulatorError(40035, "errcode must be a non-zero whole number and times at least 1")
        with self._world.lock:
            fault = _Injected(200, str(errcode), message, times, app_key, sub_code)
            self._injected.setdefault(api, deque()).append(fault)

    def inject_ip_block(self, api: str, *, html: bool = False, wait: int = 5, times: int = 1) -> None:
        """Make the next `times` calls of api (either style) answer as DingTalk's egress-IP block does (§7.1, the same
        on both bases): `{"status": 1111, "wait": N}`, or with `html` an HTML page instead of JSON."""
        _check_api(api, ALL_APIS)
        if times < 1 or isinstance(wait, bool) or not isinstance(wait, int) or wait < 1:
            raise SimulatorError(40035, "times and wait must be positive whole numbers")
        raw: dict[str, Any] | str = (
            IP_BLOCK_PAGE if html else {"status": 1111, "wait": wait, "message": "访问频率过高，请稍后再试"}
        )
        with self._world.lock:
            fault = _Injected(200, "1111", "ip blocked", times, None, raw=raw)
            self._injected.setdefault(api, deque()).append(fault)

    def set_latency(self, api: str, seconds: float) -> None:
        """Delay every answer of api by seconds (0 turns it off)."""
        _check_api(api, ALL_APIS)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_LATENCY:
            raise SimulatorError(40035, f"seconds must be between 0 and {MAX_LATENCY:g}")
        with self._world.lock:
            self._latency[api] = float(seconds)

    def wait(self, api: str) -> None:
        """Sleep for api's latency; called without the lock, so a slow answer does not hold up other callers."""
        with self._world.lock:
            delay = self._latency.get(api, 0.0)
        if delay:
            time.sleep(delay)

    def calls(self, api: str | None = None, app_key: str | None = None) -> int:
        """Count calls of the current-generation APIs that reached the simulator (errors included)."""
        with self._world.lock:
            return sum(n for (a, k), n in self._calls.items() if api in (None, a) and app_key in (None, k))

    def reset_calls(self) -> None:
        """Forget the call counts."""
        with self._world.lock:
            self._calls.clear()

    def screen(self, api: str, app_key: str | None) -> tuple[int, dict[str, Any] | str] | None:
        """Count the call; return the (status, body) a control imposes on it, or None. Called with the lock held.

        An injected error comes first, then the QPS limit (rejected calls count towards it too).
        """
        self._calls[(api, app_key)] += 1
        queue = self._injected.get(api)
        for fault in queue or ():
            if fault.app_key in (None, app_key):
                fault.remaining -= 1
                if fault.remaining == 0:
                    queue.remove(fault)  # type: ignore[union-attr]
                return fault.status, fault.body(api)
        if self._over_limit(api, app_key):
            if api in TOPAPIS:  # topapi keeps the oapi style
                return 200, {"errcode": 90018, "errmsg": "当前请求被限流,请稍后重试"}
            return 403, _v1_body(QPS_LIMITED, "当前请求被限流,请稍后重试")
        return None

    def _over_limit(self, api: str, app_key: str | None) -> bool:
        limit = self._qps.get((api, app_key), self._qps.get((api, None)))
        if limit is None:
            return False
        now = self._world.now()
        window = self._windows.setdefault((api, app_key), deque())
        while window and window[0] <= now - 1.0:
            window.popleft()
        window.append(now)
        return len(window) > limit


def _v1_body(code: str, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "requestid": secrets.token_hex(8).upper()}


def _check_api(api: str, known: tuple[str, ...]) -> None:
    if api not in known:
        raise SimulatorError(40035, f"unknown api {api!r}; known: {', '.join(known)}")
