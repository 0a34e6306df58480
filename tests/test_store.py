"""The store's URL forms, its kinds of client, which Redis answers are faults, and replicated writes
(gateway/store.py). Real servers: tests/test_sentinel.py and tests/test_cluster.py."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis
from redis.sentinel import SentinelConnectionPool

from gateway.store import (
    CLUSTER,
    IN_PROCESS,
    SENTINEL,
    SINGLE,
    ClusterStore,
    Replication,
    StoreUrl,
    StoreUrlError,
    connect,
    mode_of,
    parse_store_url,
    store_fault,
    write_replicated,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379/mymaster",
            StoreUrl(SENTINEL, (("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)), "mymaster", 0),
        ),
        (
            "redis+sentinel://s1:26379/mymaster/3",
            StoreUrl(SENTINEL, (("s1", 26379),), "mymaster", 3),
        ),
        (
            "redis+sentinel://:p%40ss@s1:26379,s2:26380/svc/",
            StoreUrl(SENTINEL, (("s1", 26379), ("s2", 26380)), "svc", 0, None, "p@ss"),
        ),
        (
            "redis+cluster://n1:7000,n2:7001",
            StoreUrl(CLUSTER, (("n1", 7000), ("n2", 7001))),
        ),
        (
            "REDIS+CLUSTER://gw:secret@[::1]:7000",
            StoreUrl(CLUSTER, (("::1", 7000),), username="gw", password="secret"),
        ),
    ],
)
def test_sentinel_and_cluster_urls_are_read(url: str, expected: StoreUrl) -> None:
    parsed = parse_store_url(url)
    assert parsed == expected and parsed.password == expected.password


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://s1:26379",  # no service
        "redis+sentinel://s1:26379/svc/zero",
        "redis+sentinel://s1:26379/svc/0/extra",
        "redis+sentinel://s1/svc",  # no port
        "redis+sentinel://s1:26379,/svc",
        "redis+sentinel://s1:notaport/svc",
        "redis+cluster://n1:7000/0",  # a cluster has one database
        "redis+cluster://n1:7000?ssl=true",
        "redis+sentinel://:hunter2@s1/svc",
        "redis+clusters://n1:7000",
    ],
)
def test_malformed_urls_are_refused_without_repeating_a_password(url: str) -> None:
    with pytest.raises(StoreUrlError) as refused:
        parse_store_url(url)
    assert "hunter2" not in str(refused.value)
    assert "://" in str(refused.value)  # says which forms it takes, or which form it read


def test_a_password_is_never_in_the_parsed_urls_repr() -> None:
    assert "hunter2" not in repr(parse_store_url("redis+cluster://:hunter2@n1:7000"))


def test_each_url_form_gets_redis_pys_own_client() -> None:
    sentinel = connect("redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc/2")
    assert isinstance(sentinel.connection_pool, SentinelConnectionPool)
    assert sentinel.connection_pool.service_name == "svc"
    assert sentinel.connection_pool.connection_kwargs["db"] == 2
    assert mode_of(sentinel) == SENTINEL
    cluster = connect("redis+cluster://127.0.0.1:1")  # made on first use: nothing listens, nothing fails yet
    assert isinstance(cluster, ClusterStore) and mode_of(cluster) == CLUSTER
    assert mode_of(connect("redis://127.0.0.1:1/0")) == SINGLE
    assert mode_of(fakeredis.FakeRedis()) == IN_PROCESS


def test_a_cluster_no_node_of_which_answers_is_a_connection_error() -> None:
    cluster = connect("redis+cluster://127.0.0.1:1")
    script = cluster.register_script("return 1")  # no connection needed to hash it
    assert len(script.sha) == 40
    with pytest.raises(redis.exceptions.ConnectionError) as down:
        cluster.get("x")
    assert store_fault(down.value) == "is unreachable"


@pytest.mark.parametrize(
    ("error", "fault"),
    [
        (redis.exceptions.ReadOnlyError("You can't write against a read only replica."), "read-only"),
        (redis.exceptions.ResponseError("UNBLOCKED force unblock"), "switching roles"),
        (redis.exceptions.ResponseError("NOREPLICAS Not enough good replicas to write."), "too few replicas"),
        (redis.exceptions.ClusterDownError("CLUSTERDOWN The cluster is down"), "down or resharding"),
        (redis.exceptions.MasterDownError("MASTERDOWN Link with MASTER is down"), "down or resharding"),
        (redis.exceptions.TryAgainError("TRYAGAIN"), "down or resharding"),
        (redis.exceptions.SlotNotCoveredError('Slot "12" is not covered by the cluster.'), "no node serves"),
        (redis.exceptions.ClusterError("TTL exhausted."), "slots are moving"),
        (redis.exceptions.MovedError("3999 127.0.0.1:6381"), "slots are moving"),
        (redis.exceptions.RedisClusterException("Redis Cluster cannot be connected. Please …"), "unreachable"),
    ],
)
def test_the_faults_of_a_switching_store_are_store_unavailable(error: Exception, fault: str) -> None:
    assert fault in (store_fault(error) or "")


@pytest.mark.parametrize(
    "error",
    [
        redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        redis.exceptions.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
        redis.exceptions.CrossSlotTransactionError("Cannot watch or send commands on different slots"),
        ValueError("not a store error"),
    ],
)
def test_what_is_the_gateways_own_bug_stays_a_bug(error: Exception) -> None:
    assert store_fault(error) is None


def test_a_replicated_write_on_the_in_process_store_needs_no_replica() -> None:
    store: Any = fakeredis.FakeRedis(decode_responses=True)
    results, replication = write_replicated(store, "k", lambda pipe: pipe.set("k", "v"), timeout=0.1)
    assert results == [True] and replication == Replication(0, 0) and replication.enough
    assert store.get("k") == "v"


def test_a_write_is_enough_on_one_replica_of_any_number() -> None:
    assert Replication(0, 0).enough
    assert Replication(2, 1).enough
    assert not Replication(1, 0).enough


@pytest.mark.redis
@pytest.mark.parametrize(
    ("forbidden", "warned"), [(["-role"], False), (["-role", "-info"], True)], ids=["no-role", "no-role-no-info"]
)
def test_a_user_that_may_not_ask_for_the_replicas_still_records(
    redis_url: str, real_redis: redis.Redis, caplog: pytest.LogCaptureFixture, forbidden: list[str], warned: bool
) -> None:
    """A locked-down Redis user (an ACL without ROLE, or without INFO too) still writes: INFO replication counts the
    replicas instead, and without it the write waits for none (with a warning saying what to allow)."""
    import gateway.store

    real_redis.acl_setuser(
        "locked", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all", *forbidden]
    )
    gateway.store._warned_no_role = False
    store = redis.Redis.from_url(redis_url, username="locked", password="pw", decode_responses=True)
    try:
        results, replication = write_replicated(store, "k", lambda pipe: pipe.set("k", "v"), timeout=0.1)
        assert results == [True] and replication == Replication(0, 0)
        assert ("neither ROLE nor INFO" in caplog.text) is warned
    finally:
        store.close()
        real_redis.acl_deluser("locked")
