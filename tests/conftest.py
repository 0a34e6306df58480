"""Shared fixtures: simulator, app, client, CLI runner, and a real Redis for what fakeredis cannot prove.

A real Redis comes from REDIS_TEST_URL, or is started here from `redis-server` on a free loopback port.
Tests marked `redis` are skipped without one, except under CI=true, where a missing Redis is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID, DEMO_PEOPLE
from sandbox.server import SimulatorServer
from sandbox.state import Simulator

# CI must be reproducible: the same examples every run (locally, hypothesis keeps exploring new ones).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI", "").lower() == "true":
    hypothesis_settings.load_profile("ci")

TEST_SECRET_KEY = "test-secret-key-0123456789"
ORIGIN = "https://h5.example.com"
CI = os.environ.get("CI", "").lower() == "true"

EMPLOYEE = next(p for p in DEMO_PEOPLE if p["contact_type"] == 0)
EXTERNAL = next(p for p in DEMO_PEOPLE if p["contact_type"] == 1)
UNLINKED = next(p for p in DEMO_PEOPLE if p["userid"] is None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on loopback, restartable (for the outage test)."""

    def __init__(self, port: int, data_dir: str | None = None) -> None:
        self.port = port
        self.data_dir = data_dir  # set: append-only file there, so data survives a restart like production
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always", "--dir", self.data_dir]
            if self.data_dir
            else ["--appendonly", "no"]
        )
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.2).ping():
                    return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """A redis-server this test session owns (None when REDIS_TEST_URL points elsewhere or none exists)."""
    if os.environ.get("REDIS_TEST_URL") or not shutil.which("redis-server"):
        yield None
        return
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    """URL of a real Redis; skips (or fails under CI) when there is none."""
    url = os.environ.get("REDIS_TEST_URL") or (redis_server.url if redis_server else None)
    if not url:
        if CI:
            pytest.fail("CI=true but no real Redis: install redis-server or set REDIS_TEST_URL")
        pytest.skip("needs a real Redis (install redis-server or set REDIS_TEST_URL)")
    return url


@pytest.fixture
def real_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A clean real Redis for one test."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sim_server() -> Iterator[SimulatorServer]:
    """The demo simulator over HTTP on a loopback port; throttling off unless a test turns it on."""
    server = SimulatorServer(Simulator.demo(rate_limit=None))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def sim(sim_server: SimulatorServer) -> Simulator:
    return sim_server.sim


def get_runtime_of(app: Any) -> Any:
    from web.runtime import get_runtime

    return get_runtime(app)


def make_config(sim_server: SimulatorServer, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "DINGTALK_API_BASE": sim_server.base_url,
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


@pytest.fixture
def app(sim_server: SimulatorServer) -> Iterator[Any]:
    """The gateway on an in-process store, talking to the simulator over HTTP, demo corp registered."""
    from app import create_app

    application = create_app(make_config(sim_server))
    register_demo(application)
    yield application
    get_runtime_of(application).close()


@pytest.fixture
def redis_app(sim_server: SimulatorServer, real_redis: redis.Redis, redis_url: str) -> Iterator[Any]:
    """The same gateway on a real Redis."""
    from app import create_app

    application = create_app(make_config(sim_server, REDIS_URL=redis_url))
    register_demo(application)
    yield application
    get_runtime_of(application).close()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def runner(app: Any) -> Any:
    return app.test_cli_runner()


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


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium for the session; tests open their own contexts and pages."""
    executable = need_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if CI:
            pytest.fail("CI=true but the playwright package is not installed")
        pytest.skip("needs the playwright package")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


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
