"""Tests for the per-corp event log (corp/events.py) and `flask corp events`.

Unit logic runs on fakeredis; atomicity under concurrency, expiry, capping and blocking reads on a real Redis.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st

from corp.events import DEDUPE_TTL, Event, EventLog, dedupe_id, event_ids, stream_key
from sandbox.demo import DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from tests.helpers import TEST_SECRET_KEY, register_demo
from web.runtime import get_runtime

CORPID = "dingcorp01"
LEAVE = {"EventType": "user_leave_org", "UserId": ["u1", "u2"], "TimeStamp": "1700000000000"}


@pytest.fixture
def store() -> redis.Redis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


@pytest.fixture
def events(store: redis.Redis) -> EventLog:
    return EventLog(store, CORPID)


# --- append, dedupe, recent -------------------------------------------------------------------------------


def test_append_records_type_time_and_ids(events: EventLog) -> None:
    result = events.append(LEAVE, received_ms=1700000001000)
    assert result.stored
    [event] = events.recent()
    assert event == Event(
        id=result.entry_id,
        type="user_leave_org",
        time=1700000000000,
        received=1700000001000,
        ids={"UserId": ["u1", "u2"]},
        dedupe=dedupe_id(LEAVE)[:32],
    )


def test_duplicate_is_stored_once_and_points_at_the_first(events: EventLog, store: redis.Redis) -> None:
    first = events.append(LEAVE)
    again = events.append(dict(reversed(list(LEAVE.items()))))
    assert not again.stored
    assert again.entry_id == first.entry_id
    assert store.xlen(stream_key(CORPID)) == 1


def test_dedupe_is_per_corp(store: redis.Redis) -> None:
    assert EventLog(store, "corpA").append(LEAVE).stored
    assert EventLog(store, "corpB").append(LEAVE).stored


def test_event_without_timestamp_takes_the_arrival_time(events: EventLog) -> None:
    events.append({"EventType": "org_remove"}, received_ms=1234567890123)
    [event] = events.recent()
    assert (event.time, event.received, event.ids) == (1234567890123, 1234567890123, {})


def test_event_timestamp_in_seconds_is_read_as_seconds(events: EventLog) -> None:
    events.append({"EventType": "org_remove", "TimeStamp": 1700000000})
    assert events.recent()[0].time == 1700000000000


def test_missing_or_odd_event_type_is_unknown(events: EventLog) -> None:
    events.append({"UserId": ["u1"]})
    events.append({"EventType": ["user_leave_org"]})
    assert [e.type for e in events.recent()] == ["unknown", "unknown"]


def test_only_ids_are_kept_never_payload_secrets(events: EventLog, store: redis.Redis) -> None:
    events.append({"EventType": "tmp_auth_code", "AuthCode": "CODE-s3cr3t", "AuthCorpId": "dingX"})
    events.append({"EventType": "suite_ticket", "SuiteTicket": "TICKET-s3cr3t", "SuiteKey": "sk"})
    raw = json.dumps(store.xrange(stream_key(CORPID)))
    assert "s3cr3t" not in raw
    assert [e.ids for e in events.recent()] == [{"AuthCorpId": ["dingX"]}, {}]


def test_event_ids_normalises_scalars_and_lists() -> None:
    event = {"UserId": "u1", "DeptId": [1, 2, "3", None, True, {"x": 1}], "ChatId": "", "Other": ["o"]}
    assert event_ids(event) == {"UserId": ["u1"], "DeptId": ["1", "2", "3"]}


def test_recent_is_oldest_first_and_bounded(events: EventLog) -> None:
    for n in range(30):
        events.append({"EventType": "user_add_org", "UserId": [f"u{n}"]})
    recent = events.recent(5)
    assert [e.ids["UserId"][0] for e in recent] == ["u25", "u26", "u27", "u28", "u29"]


def test_dedupe_marker_expires(events: EventLog, store: redis.Redis) -> None:
    events.append(LEAVE)
    [key] = store.scan_iter(match="*event-seen*")
    assert 0 < store.ttl(key) <= DEDUPE_TTL


def test_claim_request_refuses_the_second_claim(events: EventLog) -> None:
    assert events.claim_request("sig", "nonce1", 600)
    assert not events.claim_request("sig", "nonce1", 600)
    assert events.claim_request("sig", "nonce2", 600)


def test_describe_is_one_readable_line(events: EventLog) -> None:
    events.append(LEAVE)
    line = events.recent()[0].describe()
    assert line.startswith("2023-11-14T22:13:20Z  user_leave_org")
    assert "UserId=u1,u2" in line


def test_dingtalk_event_id_is_the_identity_across_receivers(events: EventLog) -> None:
    """The same event taken over Stream (eventId header, put in the event as EventId) and over HTTP (a payload
    that carries eventId) is recorded once, even where the two payloads differ in a detail."""
    over_stream = {"EventType": "user_leave_org", "EventId": "ev-1", "UserId": ["u1"], "TimeStamp": "1700000000000"}
    over_push = {"EventType": "user_leave_org", "eventId": "ev-1", "UserId": ["u1"], "CorpId": "dingX"}
    first = events.append(over_stream, source="stream")
    again = events.append(over_push, source="push")
    assert first.stored and not again.stored and again.entry_id == first.entry_id
    assert events.append({**over_push, "eventId": "ev-2"}).stored  # another id: another event
    assert events.find(over_push) == first.entry_id and events.find({"EventType": "x"}) is None


def test_source_and_event_id_are_recorded_and_shown(events: EventLog) -> None:
    events.append({**LEAVE, "EventId": "ev-9"}, source="stream")
    events.append(LEAVE, source="push")
    stream, push = events.recent()
    assert (stream.source, stream.event_id, push.source, push.event_id) == ("stream", "ev-9", "push", "")
    assert stream.describe().endswith("via stream") and push.describe().endswith("via push")


def test_an_odd_event_id_falls_back_to_the_payload(events: EventLog) -> None:
    assert dedupe_id({"EventId": ["x"], "a": 1}) != dedupe_id({"EventId": ["x"], "a": 2})
    assert dedupe_id({"EventId": "x" * 129, "a": 1}) != dedupe_id({"EventId": "x" * 129, "a": 2})


@settings(max_examples=100, deadline=None)
@given(
    event=st.dictionaries(
        st.text(max_size=12),
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | st.lists(st.text()),
        max_size=6,
    )
)
def test_any_json_event_appends_once_and_reads_back(event: dict[str, Any]) -> None:
    log = EventLog(fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True), CORPID)
    assert log.append(event).stored
    assert not log.append(event).stored
    [back] = log.recent()
    assert back.ids == event_ids(event)


# --- on a real Redis --------------------------------------------------------------------------------------


@pytest.mark.redis
def test_concurrent_deliveries_store_one_entry(real_redis: redis.Redis) -> None:
    """Many workers receiving the same event at once: the script makes check-and-append one step."""
    barrier = threading.Barrier(16)
    results: list[bool] = []

    def deliver() -> None:
        log = EventLog(redis.Redis(connection_pool=real_redis.connection_pool), CORPID)
        barrier.wait()
        results.append(log.append(LEAVE).stored)

    threads = [threading.Thread(target=deliver) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 15 + [True]
    assert real_redis.xlen(stream_key(CORPID)) == 1


@pytest.mark.redis
def test_stream_is_capped(real_redis: redis.Redis) -> None:
    log = EventLog(real_redis, CORPID, maxlen=10)
    for n in range(1000):
        log.append({"EventType": "user_add_org", "UserId": [f"u{n}"]})
    # MAXLEN ~ trims whole macro nodes (100 entries by default), so "about" maxlen.
    assert 10 <= real_redis.xlen(stream_key(CORPID)) <= 200


@pytest.mark.redis
def test_keys_share_the_corp_hash_tag_and_expire(real_redis: redis.Redis) -> None:
    log = EventLog(real_redis, CORPID)
    log.append(LEAVE)
    log.claim_request("sig", "nonce", 600)
    keys = sorted(real_redis.scan_iter(match="*"))
    assert len(keys) == 3
    assert all(k.startswith(f"dtgw:v1:{{{CORPID}}}:") for k in keys)
    assert real_redis.ttl(stream_key(CORPID)) == -1  # the log itself persists
    assert all(0 < real_redis.ttl(k) for k in keys if k != stream_key(CORPID))


@pytest.mark.redis
def test_replay_marker_expires_on_a_real_redis(real_redis: redis.Redis) -> None:
    log = EventLog(real_redis, CORPID)
    assert log.claim_request("sig", "nonce", 1)
    assert not log.claim_request("sig", "nonce", 1)
    time.sleep(1.2)
    assert log.claim_request("sig", "nonce", 1)


@pytest.mark.redis
def test_follow_yields_events_as_they_arrive(real_redis: redis.Redis) -> None:
    log = EventLog(real_redis, CORPID)
    log.append({"EventType": "org_remove", "TimeStamp": "1"})  # before following: not yielded

    def later() -> None:
        time.sleep(0.3)
        for n in range(3):
            log.append({"EventType": "user_add_org", "UserId": [f"u{n}"]})

    threading.Thread(target=later).start()
    seen = [e.ids["UserId"][0] for e in log.follow(block_ms=200, idle_timeout=1.0)]
    assert seen == ["u0", "u1", "u2"]


@pytest.mark.redis
def test_http_push_lands_in_the_real_stream(redis_app: Flask, real_redis: redis.Redis) -> None:
    from tests.test_callbacks import AES_KEY, CALLBACK_TOKEN, URL, Sender

    register_demo(redis_app, callback_token=CALLBACK_TOKEN, aes_key=AES_KEY)
    sender = Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)
    client = redis_app.test_client()
    for _ in range(2):
        response = sender.push(client, {"EventType": "org_dept_modify", "DeptId": [42], "TimeStamp": "5"})
        assert sender.check_reply(response.get_json()) == "success"
    [(_id, fields)] = real_redis.xrange(stream_key(DEMO_CORPID))
    assert fields["type"] == "org_dept_modify"
    assert json.loads(fields["ids"]) == {"DeptId": ["42"]}
    assert URL.endswith(DEMO_CORPID)


# --- flask corp events ------------------------------------------------------------------------------------


def _with_callback(app: Flask) -> None:
    register_demo(app, callback_token="cbTokenS3cret", aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")


def test_cli_prints_type_time_and_ids_never_secrets(app: Flask, runner: Any) -> None:
    _with_callback(app)
    log = EventLog(get_runtime(app).store, DEMO_CORPID)
    log.append(LEAVE)
    log.append({"EventType": "tmp_auth_code", "AuthCode": "CODE-s3cr3t", "AuthCorpId": "dingX", "TimeStamp": "0"})
    result = runner.invoke(args=["corp", "events", DEMO_CORPID])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert "2023-11-14T22:13:20Z" in lines[0] and "user_leave_org" in lines[0] and "UserId=u1,u2" in lines[0]
    assert "tmp_auth_code" in lines[1] and "AuthCorpId=dingX" in lines[1]
    for secret in ("CODE-s3cr3t", "cbTokenS3cret", "abcdefghijklmnop", DEMO_CORP_SECRET, DEMO_CHANNEL_SECRET):
        assert secret not in result.output
    assert TEST_SECRET_KEY not in result.output


def test_cli_count_limits_output(app: Flask, runner: Any) -> None:
    log = EventLog(get_runtime(app).store, DEMO_CORPID)
    for n in range(5):
        log.append({"EventType": "user_add_org", "UserId": [f"u{n}"]})
    result = runner.invoke(args=["corp", "events", DEMO_CORPID, "-n", "2"])
    assert [line.split()[-2] for line in result.output.splitlines()] == ["UserId=u3", "UserId=u4"]


def test_cli_with_no_events(runner: Any) -> None:
    result = runner.invoke(args=["corp", "events", DEMO_CORPID])
    assert result.exit_code == 0
    assert "No events recorded" in result.output


def test_cli_unknown_corp_fails(runner: Any) -> None:
    result = runner.invoke(args=["corp", "events", "dingnobody"])
    assert result.exit_code != 0
    assert "not registered" in result.output


def test_cli_help_is_the_docstring(runner: Any) -> None:
    result = runner.invoke(args=["corp", "events", "--help"])
    assert "recent DingTalk events" in result.output
    assert "--follow" in result.output


@pytest.mark.redis
def test_cli_follow_prints_new_events(redis_app: Flask) -> None:
    log = EventLog(get_runtime(redis_app).store, DEMO_CORPID)
    log.append({"EventType": "org_remove", "TimeStamp": "1"})

    def later() -> None:
        time.sleep(0.5)
        log.append({"EventType": "user_leave_org", "UserId": ["late1"]})

    threading.Thread(target=later).start()
    result = redis_app.test_cli_runner().invoke(
        args=["corp", "events", DEMO_CORPID, "--follow", "--idle-timeout", "1.5"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 2
    assert "org_remove" in lines[0]
    assert "user_leave_org" in lines[1] and "UserId=late1" in lines[1]
