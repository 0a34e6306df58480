"""The near cache against a real Redis: kept while unchanged, dropped on every kind of change, off when unsure."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from kit.nearcache import NearCache
from kit.sealing import Sealer
from oapi.credentials import CacheSettings, ChannelTicket
from oapi.tokens import CredentialCache

PREFIX = "dtgw:v1:"
KEY = "dtgw:v1:{dingnear}:channel:ticket"


def wait_until(condition: Callable[[], object], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def hgetall_calls(client: redis.Redis) -> int:
    stats: Any = client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


def settle(read: Callable[[], object], real_redis: redis.Redis, timeout: float = 5.0) -> None:
    """Read until a read costs no HGETALL: the value is kept, and the announcement of this process's own write
    (which drops a copy once, at a moment a loaded machine does not control) has been heard."""
    deadline = time.monotonic() + timeout
    while True:
        before = hgetall_calls(real_redis)
        read()
        if hgetall_calls(real_redis) == before:
            return
        if time.monotonic() > deadline:
            raise AssertionError("reads never came from memory")
        time.sleep(0.01)


@pytest.fixture
def client(redis_url: str, real_redis: redis.Redis) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=2)
    yield c
    c.close()


@pytest.fixture
def near(client: redis.Redis) -> Iterator[NearCache]:
    cache = NearCache(client, PREFIX, ping_every=0.2, stale_after=1.0, max_backoff=0.2)
    cache.snapshot()  # starts the listener
    wait_until(lambda: cache.live)
    yield cache
    cache.close()


def kept(near: NearCache, key: str = KEY, value: str = "v1") -> None:
    snapshot = near.snapshot()
    assert snapshot is not None
    near.put(key, value, ttl_ms=60_000, snapshot=snapshot, read_at=time.monotonic())
    assert near.get(key) == value


def test_kept_value_is_served_until_redis_announces_a_write(near: NearCache, real_redis: redis.Redis) -> None:
    kept(near)
    real_redis.set("dtgw:v1:{dingnear}:something:else", "x")  # another key: no effect on ours
    time.sleep(0.1)
    assert near.get(KEY) == "v1"
    real_redis.hset(KEY, "v", "new")
    wait_until(lambda: near.get(KEY) is None)


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.delete(KEY),
        lambda r: r.expire(KEY, 0),
        lambda r: r.flushdb(),
        lambda r: r.eval("redis.call('HSET', KEYS[1], 'gen', '9')", 1, KEY),
    ],
    ids=["delete", "expire", "flushdb", "script"],
)
def test_every_kind_of_change_is_announced(
    near: NearCache, real_redis: redis.Redis, change: Callable[[redis.Redis], object]
) -> None:
    real_redis.hset(KEY, "v", "old")
    kept(near)
    change(real_redis)
    wait_until(lambda: near.get(KEY) is None)


def test_a_read_that_raced_an_announcement_is_not_kept(near: NearCache, real_redis: redis.Redis) -> None:
    snapshot = near.snapshot()
    assert snapshot is not None
    # The value was read (as "old"), then someone wrote the key before the reader could keep it.
    real_redis.hset(KEY, "v", "new")
    wait_until(lambda: near.snapshot() != snapshot)
    near.put(KEY, "old", ttl_ms=60_000, snapshot=snapshot, read_at=time.monotonic())
    assert near.get(KEY) is None


@pytest.mark.parametrize(
    "options", [{"decode_responses": False}, {"protocol": 3, "decode_responses": True}], ids=["bytes", "resp3"]
)
def test_announcements_work_whatever_the_store_client_speaks(
    redis_url: str, real_redis: redis.Redis, options: dict[str, Any]
) -> None:
    store = redis.Redis.from_url(redis_url, **options)
    near = NearCache(store, PREFIX, ping_every=0.2)
    try:
        near.snapshot()
        wait_until(lambda: near.live)
        kept(near)
        real_redis.hset(KEY, "v", "new")
        wait_until(lambda: near.get(KEY) is None)
    finally:
        near.close()
        store.close()


def test_entry_is_never_served_past_the_ttl_it_was_read_with(near: NearCache) -> None:
    snapshot = near.snapshot()
    assert snapshot is not None
    near.put(KEY, "short", ttl_ms=150, snapshot=snapshot, read_at=time.monotonic())
    assert near.get(KEY) == "short"
    time.sleep(0.2)
    assert near.get(KEY) is None
    # A key without a TTL (-1) or already gone (-2) is never kept.
    for ttl in (-1, -2):
        near.put(KEY, "x", ttl_ms=ttl, snapshot=near.snapshot() or 0, read_at=time.monotonic())
        assert near.get(KEY) is None


def test_losing_the_invalidation_connection_drops_everything_until_resubscribed(
    near: NearCache, real_redis: redis.Redis
) -> None:
    kept(near)
    real_redis.client_kill_filter(_type="pubsub")
    wait_until(lambda: not near.live)
    assert near.get(KEY) is None
    assert near.snapshot() is None  # nothing read while down may be kept
    wait_until(lambda: near.live)  # it reconnects by itself
    assert near.get(KEY) is None  # and starts empty: announcements sent meanwhile were lost
    kept(near, value="v2")


def test_a_silent_channel_is_not_trusted(near: NearCache) -> None:
    kept(near)
    near._heard -= 5  # as if no answer to PING for 5 s (a connection that died without a reset)
    assert near.get(KEY) is None
    assert near.snapshot() is None


def test_a_redis_that_refuses_client_tracking_means_plain_store_reads(
    redis_url: str, real_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    real_redis.acl_setuser(
        "notrack", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", "-client"]
    )
    try:
        # A small pool: the listener's many reconnects must not use up the request path's connections.
        limited = redis.Redis.from_url(
            redis_url + "?max_connections=2", username="notrack", password="pw", decode_responses=True
        )
        cache = NearCache(limited, PREFIX, ping_every=0.2, max_backoff=0.02)
        with caplog.at_level(logging.WARNING, logger="kit.nearcache"):
            assert cache.snapshot() is None
            wait_until(lambda: "near cache off" in caplog.text)
        time.sleep(0.5)  # a couple of dozen failed attempts
        assert not cache.live and cache.snapshot() is None
        limited.set("dtgw:v1:{dingnear}:x", "still served by the store")
        assert limited.get("dtgw:v1:{dingnear}:x") == "still served by the store"
        cache.close()
        limited.close()
    finally:
        real_redis.acl_deluser("notrack")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_listener(near: NearCache) -> None:
    kept(near)
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread and connection are not its own
        ok = near._thread is None and not near.live and near.get(KEY) is None
        near.snapshot()
        deadline = time.monotonic() + 3
        while not near.live and time.monotonic() < deadline:
            time.sleep(0.01)
        os._exit(0 if ok and near.live else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert near.get(KEY) == "v1"  # the parent is untouched


# -- through CredentialCache -------------------------------------------------------------------------------------


def ticket_cache(client: redis.Redis, near: NearCache | None, fetches: list[str]) -> CredentialCache[ChannelTicket]:
    def fetch() -> tuple[str, int | None]:
        fetches.append("fetch")
        return f"ticket-{len(fetches)}", 7200

    return CredentialCache(
        client,
        Sealer("near-cache-test-key"),
        corpid="dingnear",
        pipeline="channel:ticket",
        kind=ChannelTicket,
        fetch=fetch,
        settings=CacheSettings(margin=300, jitter=0),
        near=near,
    )


def test_credential_reads_cost_no_round_trip_once_kept(
    client: redis.Redis, near: NearCache, real_redis: redis.Redis
) -> None:
    fetches: list[str] = []
    cache = ticket_cache(client, near, fetches)
    first = cache.get()
    settle(cache.get, real_redis)
    before = hgetall_calls(real_redis)
    for _ in range(50):
        assert cache.get().value == first.value
    assert hgetall_calls(real_redis) - before == 0  # kept: no round trip at all
    assert fetches == ["fetch"]
    assert first.value not in repr(first)  # kept for hours now: never in a repr or a traceback's locals


def test_another_process_refresh_is_seen_without_waiting_for_a_ttl(
    redis_url: str, client: redis.Redis, near: NearCache
) -> None:
    # Two workers: separate clients, separate near caches, one store.
    other_client = redis.Redis.from_url(redis_url, decode_responses=True)
    other_near = NearCache(other_client, PREFIX, ping_every=0.2)
    try:
        fetches: list[str] = []
        mine, theirs = ticket_cache(client, near, fetches), ticket_cache(other_client, other_near, fetches)
        old = mine.get()
        assert mine.get().generation == old.generation  # kept
        fresh = theirs.force_refresh(cooldown=60)  # e.g. after a page reported 52013
        assert fresh is not None and fresh.generation > old.generation
        wait_until(lambda: mine.get().value == fresh.value, timeout=1.0)
        assert len(fetches) == 2
    finally:
        other_near.close()
        other_client.close()


def test_own_writes_are_seen_at_once(client: redis.Redis, near: NearCache) -> None:
    fetches: list[str] = []
    cache = ticket_cache(client, near, fetches)
    old = cache.get()
    assert cache.get().generation == old.generation
    fresh = cache.force_refresh(cooldown=60)
    assert fresh is not None
    assert cache.get().value == fresh.value  # no wait: this process dropped its own entry when it wrote
    assert cache.invalidate(fresh)
    assert cache.peek() is None


# -- through the app ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_config_requests_read_the_ticket_from_memory(
    sim_server: Any, redis_url: str, real_redis: redis.Redis, enabled: bool
) -> None:
    from app import create_app
    from tests.helpers import make_config, register_demo
    from web.runtime import get_runtime

    app = create_app(
        make_config(sim_server, REDIS_URL=redis_url, GATEWAY_NEAR_CACHE=enabled, GATEWAY_CORP_CACHE_TTL=60)
    )
    register_demo(app)
    rt = get_runtime(app)
    try:
        client = app.test_client()
        url = "/channel/config?corpid=dingdemo0001&agentid=1000001&url=https%3A%2F%2Fh5.example.com%2Fp"
        assert client.get(url).status_code == 200  # fetches token and ticket
        if enabled:
            assert rt.near is not None
            wait_until(lambda: rt.near.live)
        assert client.get(url).status_code == 200  # keeps the ticket, if it may
        if enabled:
            settle(lambda: client.get(url), real_redis)
        before = hgetall_calls(real_redis)
        bodies = [client.get(url).get_json() for _ in range(30)]
        reads = hgetall_calls(real_redis) - before
        assert reads == (0 if enabled else 30)
        assert all(sim_server.sim.check_config(**{**b, "url": "https://h5.example.com/p"})["ok"] for b in bodies)
    finally:
        rt.close()


def test_a_tracking_connection_to_a_server_that_is_no_longer_the_primary_is_dropped(
    client: redis.Redis, real_redis: redis.Redis
) -> None:
    """Sentinel names another primary while this connection still works (a primary cut off from the sentinels,
    not from us): the cache empties and tracks the primary the sentinels name, nothing else."""
    kwargs = client.connection_pool.connection_kwargs
    here = (kwargs["host"], int(kwargs["port"]))
    named = {"primary": here}
    cache = NearCache(
        client,
        PREFIX,
        ping_every=0.1,
        stale_after=1.0,
        max_backoff=0.1,
        primary=lambda: named["primary"],
        check_every=0.1,
    )
    try:
        cache.snapshot()
        wait_until(lambda: cache.live)
        assert cache.describe() == {"tracking": f"{here[0]}:{here[1]}", "flushes": 0, "reason": None}
        kept(cache)
        named["primary"] = ("127.0.0.1", 1)  # the sentinels now name another server
        wait_until(lambda: not cache.live)
        assert cache.get(KEY) is None
        info = cache.describe()
        assert info["flushes"] == 1 and info["tracking"] is None
        wait_until(lambda: "primary moved" in (cache.describe()["reason"] or ""))
        time.sleep(0.5)
        assert not cache.live  # reconnecting here again does not make it live: this is not the primary
        named["primary"] = here
        wait_until(lambda: cache.live)
        assert cache.get(KEY) is None  # and it starts empty
    finally:
        cache.close()
