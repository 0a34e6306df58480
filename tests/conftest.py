"""Shared fixtures: simulator, app, client, CLI runner, and a real Redis for what fakeredis cannot prove.

Constants and small functions the tests share live in tests/helpers.py; test modules import them from there.

A real Redis comes from REDIS_TEST_URL, or is started here from `redis-server` on a free loopback port.
Tests marked `redis` are skipped without one, except under CI=true, where a missing Redis is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from hypothesis import settings as hypothesis_settings

from sandbox.processes import free_port
from sandbox.redis_server import RedisServer
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from tests.helpers import CHROMIUM_ARGS, CI, make_config, need_chromium, register_demo

# CI must be reproducible: the same examples every run (locally, hypothesis keeps exploring new ones).
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if CI:
    hypothesis_settings.load_profile("ci")


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
