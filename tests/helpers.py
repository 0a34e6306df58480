"""What the tests share besides fixtures: constants (the secret key, the page's origin, the demo followers), the
app's settings against a simulator, registering the demo corp, the `flask corp add` command line, a call on a
thread of its own, and small checks. conftest.py builds its fixtures from these; a test module imports them from
here, never from conftest.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID, DEMO_PEOPLE
from sandbox.server import SimulatorServer

TEST_SECRET_KEY = "test-secret-key-0123456789"
ORIGIN = "https://h5.example.com"
CI = os.environ.get("CI", "").lower() == "true"

EMPLOYEE = next(p for p in DEMO_PEOPLE if p["contact_type"] == 0)
EXTERNAL = next(p for p in DEMO_PEOPLE if p["contact_type"] == 1)
UNLINKED = next(p for p in DEMO_PEOPLE if p["userid"] is None)


def make_config(sim_server: SimulatorServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "DINGTALK_API_BASE": sim_server.base_url,
        "DINGTALK_OPENAPI_BASE": sim_server.base_url,  # the simulator serves both API generations
        "REDIS_URL": None,
        "GATEWAY_SECRET_KEY": TEST_SECRET_KEY,
        "GATEWAY_SANDBOX": False,
        "GATEWAY_HTTP_TIMEOUT": 3.0,
        "GATEWAY_TOKEN_JITTER": 0,
        "TESTING": True,
    }
    config.update(overrides)
    return config


def register_demo(app: Any, *, origins: tuple[str, ...] = (ORIGIN,), **kw: Any) -> None:
    """Register the simulator's demo corp in the app's registry."""
    from corp.registry import Corp
    from web.runtime import get_runtime

    fields: dict[str, Any] = {
        "corpid": DEMO_CORPID,
        "agent_id": DEMO_AGENT_ID,
        "origins": origins,
        "corp_secret": DEMO_CORP_SECRET,
        "channel_secret": DEMO_CHANNEL_SECRET,
    }
    fields.update(kw)
    get_runtime(app).registry.add(Corp(**fields))


def corp_add_args(
    corpid: str = DEMO_CORPID,
    *,
    corp_secret: str = DEMO_CORP_SECRET,
    channel_secret: str = DEMO_CHANNEL_SECRET,
    agent_id: str = DEMO_AGENT_ID,
    origin: str = ORIGIN,
) -> list[str]:
    """The arguments of `flask corp add` registering a corp (the demo corp unless told otherwise) with one origin."""
    return [
        "corp",
        "add",
        corpid,
        "--corp-secret",
        corp_secret,
        "--channel-secret",
        channel_secret,
        "--agent-id",
        agent_id,
        "--origin",
        origin,
    ]


def in_background(
    call: Callable[[], Any], *, catch: type[BaseException] | tuple[type[BaseException], ...] = ()
) -> Callable[[float], Any]:
    """Start `call` on a thread of its own. The function returned joins it (waiting at most `timeout` seconds) and
    gives what the call returned, or the exception of `catch` it raised; any other exception ends the thread
    unhandled, and the join then fails like a call that never returned."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except catch as e:
            outcome.append(e)

    thread = threading.Thread(target=run)
    thread.start()

    def join(timeout: float) -> Any:
        thread.join(timeout)
        assert outcome, f"the call in the background did not return within {timeout} s"
        return outcome[0]

    return join


# -- browser (Debian's chromium driven by Playwright; no browser download ever) --------------------------------

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which this network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"


def need_chromium() -> str:
    """The chromium executable; skips (fails under CI=true) when there is none."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not executable:
        if CI:
            pytest.fail(f"CI=true but no chromium at {CHROMIUM}: install Debian's chromium")
        pytest.skip(f"needs Debian's chromium ({CHROMIUM})")
    return executable


def need_tools(*tools: str) -> None:
    """Skip (fail under CI=true) unless every executable of `tools` is installed (Debian's redis-server,
    redis-sentinel, redis-tools)."""
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        if CI:
            pytest.fail(
                f"CI=true but {', '.join(missing)} missing: apt-get install redis-server redis-sentinel redis-tools"
            )
        pytest.skip(f"needs {', '.join(missing)} (apt-get install redis-server redis-sentinel redis-tools)")


def store_dump(client: redis.Redis) -> str:
    """Every key and value in a store, as one string to scan for secrets."""
    parts: list[str] = []
    for key in client.scan_iter(count=1000):
        parts.append(str(key))
        kind = client.type(key)
        if kind == "string":
            parts.append(str(client.get(key)))
        elif kind == "hash":
            parts.extend(f"{k}={v}" for k, v in client.hgetall(key).items())
        elif kind == "list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(client.smembers(key))
        elif kind == "stream":
            parts.extend(str(e) for e in client.xrange(key))
        elif kind == "zset":
            parts.extend(str(m) for m in client.zrange(key, 0, -1))
    return "\n".join(parts)


# -- the current generation (dingtalk-oapi.md §7): an internal app in a real org -------------------------------

APP_CORPID = "dingappcorp0001"
APP_KEY = "dingappkey0001"
APP_SECRET = "app-secret-0001"
APP_MEMBER = {"userid": "emp-1", "unionid": "union-emp-1", "name": "张三", "associated_unionid": "assoc-emp-1"}


def add_internal_app(
    sim: Any, *, corpid: str = APP_CORPID, app_key: str = APP_KEY, app_secret: str = APP_SECRET
) -> None:
    """Register an org with one member and an app in it, in the simulator's current-generation part."""
    sim.apps.add_org(corpid)
    sim.apps.add_member(corpid, **APP_MEMBER)
    sim.apps.add_app(corpid, app_key=app_key, app_secret=app_secret)
