"""Tests for the push receiver (corp/callbacks.py), through its HTTP face.

The sender below is written from oapi doc §5 alone (pycryptodome, its own framing and padding), so the
round trips check the module against the spec, not against itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import string
import time
from typing import Any

import pytest
from Crypto.Cipher import AES
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corp.events import stream_key
from sandbox.demo import DEMO_CORPID
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from tests.helpers import EMPLOYEE, EXTERNAL, TEST_SECRET_KEY, make_config, register_demo, store_dump
from web.runtime import get_runtime

CALLBACK_TOKEN = "cbT0ken-for-tests"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
OTHER_AES_KEY = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut"
URL = f"/ding/callback/{DEMO_CORPID}"


class Sender:
    """DingTalk's side of a push, from the spec: AES-256-CBC, IV = key[:16], PKCS#7 to 32, SHA-1 signature."""

    def __init__(self, token: str, encoding_aes_key: str, receiver_key: str) -> None:
        self.token = token
        self.key = base64.b64decode(encoding_aes_key + "=")
        self.receiver_key = receiver_key.encode()

    def encrypt(self, msg: str | bytes, *, receiver_key: bytes | None = None) -> str:
        body = msg.encode() if isinstance(msg, str) else msg
        plain = secrets.token_bytes(16) + len(body).to_bytes(4, "big") + body
        plain += self.receiver_key if receiver_key is None else receiver_key
        n = 32 - len(plain) % 32
        plain += bytes([n]) * n
        return base64.b64encode(AES.new(self.key, AES.MODE_CBC, iv=self.key[:16]).encrypt(plain)).decode()

    def decrypt(self, encrypt: str) -> str:
        plain = AES.new(self.key, AES.MODE_CBC, iv=self.key[:16]).decrypt(base64.b64decode(encrypt))
        plain = plain[: -plain[-1]]
        length = int.from_bytes(plain[16:20], "big")
        assert plain[20 + length :] == self.receiver_key
        return plain[20 : 20 + length].decode()

    def sign(self, timestamp: str, nonce: str, encrypt: str) -> str:
        return hashlib.sha1("".join(sorted([self.token, timestamp, nonce, encrypt])).encode()).hexdigest()

    def request(
        self,
        encrypt: str,
        *,
        timestamp: str | None = None,
        nonce: str | None = None,
        signature: str | None = None,
        new_names: bool = False,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Return (query, body) of a push carrying ``encrypt``."""
        timestamp = timestamp or str(int(time.time() * 1000))
        nonce = nonce or "".join(secrets.choice(string.ascii_letters) for _ in range(8))
        signature = signature or self.sign(timestamp, nonce, encrypt)
        if new_names:
            query = {"msg_signature": signature, "timeStamp": timestamp, "nonce": nonce}
        else:
            query = {"signature": signature, "timestamp": timestamp, "nonce": nonce}
        return query, {"encrypt": encrypt}

    def push(self, client: FlaskClient, event: dict[str, Any], url: str = URL, **kw: Any) -> Any:
        query, body = self.request(self.encrypt(json.dumps(event)), **kw)
        return client.post(url, query_string=query, json=body)

    def check_reply(self, reply: dict[str, str]) -> str:
        """Check the reply's signature and return what it carries."""
        assert set(reply) == {"msg_signature", "timeStamp", "nonce", "encrypt"}
        assert reply["msg_signature"] == self.sign(reply["timeStamp"], reply["nonce"], reply["encrypt"])
        return self.decrypt(reply["encrypt"])


@pytest.fixture
def sender() -> Sender:
    return Sender(CALLBACK_TOKEN, AES_KEY, DEMO_CORPID)


def with_callback(app: Flask, **kw: Any) -> Flask:
    register_demo(app, callback_token=CALLBACK_TOKEN, aes_key=AES_KEY, **kw)
    return app


@pytest.fixture
def cb_app(app: Flask) -> Flask:
    return with_callback(app)


@pytest.fixture
def cb_client(cb_app: Flask) -> FlaskClient:
    return cb_app.test_client()


def stream_len(app: Flask, corpid: str = DEMO_CORPID) -> int:
    return int(get_runtime(app).store.xlen(stream_key(corpid)))


def entries(app: Flask, corpid: str = DEMO_CORPID) -> list[dict[str, str]]:
    return [fields for _id, fields in get_runtime(app).store.xrange(stream_key(corpid))]


LEAVE = {"EventType": "user_leave_org", "UserId": [EMPLOYEE["userid"]], "TimeStamp": "1700000000000"}


# --- the happy path ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("new_names", [False, True], ids=["signature+timestamp", "msg_signature+timeStamp"])
def test_round_trip_reply_decrypts_to_success(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender, new_names: bool
) -> None:
    event = {"EventType": "user_add_org", "UserId": ["u1", "u2"], "TimeStamp": "1700000000000"}
    response = sender.push(cb_client, event, new_names=new_names)
    assert response.status_code == 200, response.get_json()
    assert sender.check_reply(response.get_json()) == "success"
    [stored] = entries(cb_app)
    assert stored["type"] == "user_add_org"
    assert stored["time"] == "1700000000000"
    assert json.loads(stored["ids"]) == {"UserId": ["u1", "u2"]}
    assert len(stored["dedupe"]) == 32


def test_timestamp_in_seconds_is_accepted(cb_client: FlaskClient, sender: Sender) -> None:
    response = sender.push(cb_client, {"EventType": "org_dept_create", "DeptId": [7]}, timestamp=str(int(time.time())))
    assert response.status_code == 200
    assert sender.check_reply(response.get_json()) == "success"


def test_receiver_key_is_the_registered_callback_key(app: Flask) -> None:
    with_callback(app, callback_key="suiteKeyAbc")
    response = Sender(CALLBACK_TOKEN, AES_KEY, "suiteKeyAbc").push(app.test_client(), {"EventType": "chat_quit"})
    assert response.status_code == 200
    assert stream_len(app) == 1


@pytest.mark.parametrize("kind", ["check_create_suite_url", "check_update_suite_url"])
def test_suite_url_checks_echo_random(cb_app: Flask, cb_client: FlaskClient, sender: Sender, kind: str) -> None:
    response = sender.push(cb_client, {"EventType": kind, "Random": "LPIdSnlF", "TestSuiteKey": "suite4x"})
    assert response.status_code == 200
    assert sender.check_reply(response.get_json()) == "LPIdSnlF"
    assert stream_len(cb_app) == 0  # handshakes are not recorded


def test_suite_url_check_without_random_is_refused(cb_client: FlaskClient, sender: Sender) -> None:
    response = sender.push(cb_client, {"EventType": "check_create_suite_url"})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_request"


def test_check_url_answers_success_and_is_not_recorded(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    response = sender.push(cb_client, {"EventType": "check_url"})
    assert sender.check_reply(response.get_json()) == "success"
    assert stream_len(cb_app) == 0


def test_published_vector_through_the_endpoint(sim_server: SimulatorServer) -> None:
    """oapi doc §5's push, verbatim; its 2015 timestamp needs a window wide enough to reach it."""
    from app import create_app

    application = create_app(make_config(sim_server, GATEWAY_CALLBACK_WINDOW=2_000_000_000))
    register_demo(
        application,
        callback_token="123456",
        aes_key="4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij",
        callback_key="suite4xxxxxxxxxxxxxxx",
    )
    encrypt = (
        "1a3NBxmCFwkCJvfoQ7WhJHB+iX3qHPsc9JbaDznE1i03peOk1LaOQoRz3+nlyGNhwmwJ3vDMG+OzrHMeiZI7gTRWVdUBmfxjZ8Ej23JV"
        "Ya9VrYeJ5as7XM/ZpulX8NEQis44w53h1qAgnC3PRzM7Zc/D6Ibr0rgUathB6zRHP8PYrfgnNOS9PhSBdHlegK+AGGanfwjXuQ9+0pZc"
        "y0w9lQ=="
    )
    query = {"signature": "5a65ceeef9aab2d149439f82dc191dd6c5cbe2c0", "timestamp": "1445827045067", "nonce": "nEXhMP4r"}
    response = application.test_client().post(URL, query_string=query, json={"encrypt": encrypt})
    assert response.status_code == 200, response.get_json()
    vector_sender = Sender("123456", "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij", "suite4xxxxxxxxxxxxxxx")
    assert vector_sender.check_reply(response.get_json()) == "LPIdSnlF"


# --- malformed input: right status and code, nothing recorded ---------------------------------------------


def _query(sender: Sender, encrypt: str, **kw: Any) -> tuple[dict[str, str], Any]:
    return sender.request(encrypt, **kw)


def _good(sender: Sender) -> str:
    return sender.encrypt(json.dumps({"EventType": "user_add_org", "UserId": ["u1"]}))


def _without(name: str) -> Any:
    def build(sender: Sender) -> tuple[dict[str, str], Any]:
        query, body = sender.request(_good(sender))
        del query[name]
        return query, body

    return build


def _signed(encrypt_of: Any, **kw: Any) -> Any:
    """A correctly signed push whose ciphertext is ``encrypt_of(sender)``: the failure is past the signature."""

    def build(sender: Sender) -> tuple[dict[str, str], Any]:
        return sender.request(encrypt_of(sender), **kw)

    return build


def _skewed(seconds: float, unit: str) -> Any:
    def build(sender: Sender) -> tuple[dict[str, str], Any]:
        at = time.time() + seconds
        timestamp = str(int(at * 1000)) if unit == "ms" else str(int(at))
        return sender.request(_good(sender), timestamp=timestamp)

    return build


def _body(body: Any) -> Any:
    def build(sender: Sender) -> tuple[dict[str, str], Any]:
        query, _ = sender.request(_good(sender))
        return query, body

    return build


def _bad_signature(sender: Sender) -> tuple[dict[str, str], Any]:
    encrypt = _good(sender)
    query, body = sender.request(encrypt)
    query["signature"] = ("0" if query["signature"][0] != "0" else "1") + query["signature"][1:]
    return query, body


def _wrong_token(sender: Sender) -> tuple[dict[str, str], Any]:
    return Sender("another-token", AES_KEY, DEMO_CORPID).request(_good(sender))


# Plaintexts built by hand (random 16 ‖ length BE32 ‖ msg ‖ receiver key ‖ padding), then encrypted with the
# sender's key as-is: each breaks one rule of oapi doc §5 while the push stays correctly signed.
_EVENT = b'{"EventType":"user_add_org","UserId":["u1"]}'


def _raw(sender: Sender, plain: bytes) -> str:
    assert len(plain) % 16 == 0
    return base64.b64encode(AES.new(sender.key, AES.MODE_CBC, iv=sender.key[:16]).encrypt(plain)).decode()


def _content(sender: Sender, *, length: int | None = None, msg: bytes = _EVENT) -> bytes:
    declared = len(msg) if length is None else length
    return secrets.token_bytes(16) + declared.to_bytes(4, "big") + msg + sender.receiver_key


def _pad(data: bytes) -> bytes:
    n = 32 - len(data) % 32
    return bytes([n]) * n


def _pad_byte_zero(sender: Sender) -> str:
    plain = _content(sender)
    plain += _pad(plain)
    return _raw(sender, plain[:-1] + b"\x00")


def _pad_byte_33(sender: Sender) -> str:
    plain = _content(sender)
    return _raw(sender, plain + b"\x21" * (33 + -(len(plain) + 33) % 32))


def _pad_inconsistent(sender: Sender) -> str:
    plain = _content(sender)
    pad = _pad(plain)
    assert len(pad) >= 2, "pick a message that leaves room for a broken pad"
    return _raw(sender, plain + bytes([pad[0] ^ 0xFF]) + pad[1:])


def _length_beyond(extra: int) -> Any:
    """The length field claims ``extra`` bytes more than message and receiver key together."""

    def encrypt_of(sender: Sender) -> str:
        plain = _content(sender, length=len(_EVENT) + len(sender.receiver_key) + extra)
        return _raw(sender, plain + _pad(plain))

    return encrypt_of


def _length_huge(sender: Sender) -> str:
    plain = _content(sender, length=2**32 - 1)
    return _raw(sender, plain + _pad(plain))


# Written with the escape, so the message is plain ASCII: only what json.loads makes of it is not UTF-8.
LONE_SURROGATE = r'{"EventType":"user_leave_org","UserId":["\ud800"]}'


MALFORMED: dict[str, tuple[Any, int, str]] = {
    "bad signature": (_bad_signature, 403, "signature_invalid"),
    "signed with another token": (_wrong_token, 403, "signature_invalid"),
    "missing signature": (_without("signature"), 400, "invalid_request"),
    "missing timestamp": (_without("timestamp"), 400, "invalid_request"),
    "missing nonce": (_without("nonce"), 400, "invalid_request"),
    "timestamp not a number": (_signed(_good, timestamp="yesterday"), 400, "invalid_request"),
    "stale timestamp (s)": (_skewed(-301, "s"), 403, "signature_invalid"),
    "future timestamp (s)": (_skewed(+301, "s"), 403, "signature_invalid"),
    "stale timestamp (ms)": (_skewed(-301, "ms"), 403, "signature_invalid"),
    "future timestamp (ms)": (_skewed(+301, "ms"), 403, "signature_invalid"),
    "bad base64": (_signed(lambda s: "not*base64!!"), 400, "decrypt_failed"),
    "not whole blocks": (_signed(lambda s: base64.b64encode(b"x" * 20).decode()), 400, "decrypt_failed"),
    "pad byte 0": (_signed(_pad_byte_zero), 400, "decrypt_failed"),
    "pad byte 33": (_signed(_pad_byte_33), 400, "decrypt_failed"),
    "pad inconsistent": (_signed(_pad_inconsistent), 400, "decrypt_failed"),
    "length field one beyond the plaintext": (_signed(_length_beyond(1)), 400, "decrypt_failed"),
    "length field 2**32-1": (_signed(_length_huge), 400, "decrypt_failed"),
    # The registry refuses an EncodingAESKey that cannot give a 32-byte key (BadAesKey, tested in
    # test_callback_crypto), so the bad-key case that can reach the endpoint is a push under another key.
    "encrypted under another EncodingAESKey": (
        _signed(lambda s: Sender(CALLBACK_TOKEN, OTHER_AES_KEY, DEMO_CORPID).encrypt('{"EventType":"x"}')),
        400,
        "decrypt_failed",
    ),
    "receiver key mismatch": (
        _signed(lambda s: s.encrypt('{"EventType":"x"}', receiver_key=b"someoneElse")),
        400,
        "decrypt_failed",
    ),
    "message not JSON": (_signed(lambda s: s.encrypt("EventType=user_add_org")), 400, "decrypt_failed"),
    "message a JSON array": (_signed(lambda s: s.encrypt('["user_add_org"]')), 400, "decrypt_failed"),
    "message not UTF-8": (_signed(lambda s: s.encrypt(b"\xff\xfe{}")), 400, "decrypt_failed"),
    "message with a lone surrogate escape": (_signed(lambda s: s.encrypt(LONE_SURROGATE)), 400, "decrypt_failed"),
    "missing body": (_body(None), 400, "invalid_request"),
    "body not JSON": (_body("encrypt=abc"), 400, "invalid_request"),
    "body a JSON array": (_body(["abc"]), 400, "invalid_request"),
    "body without encrypt": (_body({"encrypted": "abc"}), 400, "invalid_request"),
    "encrypt not a string": (_body({"encrypt": 12345}), 400, "invalid_request"),
    "encrypt empty": (_body({"encrypt": ""}), 400, "invalid_request"),
}


@pytest.mark.parametrize(("build", "status", "code"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_malformed_push_is_refused_and_not_recorded(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender, build: Any, status: int, code: str
) -> None:
    query, body = build(sender)
    if body is None:
        response = cb_client.post(URL, query_string=query)
    elif isinstance(body, str):
        response = cb_client.post(URL, query_string=query, data=body, content_type="text/plain")
    else:
        response = cb_client.post(URL, query_string=query, json=body)
    assert response.status_code == status, response.get_json()
    error = response.get_json()["error"]
    assert error["code"] == code
    assert "dingtalk" not in error  # 900xxx codes are ours, not the upstream's
    assert stream_len(cb_app) == 0
    assert not list(get_runtime(cb_app).store.scan_iter(match="*event-seen*"))


def test_lone_surrogate_push_is_refused_and_not_retried_forever(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed push that parses to a str no UTF-8 encoder takes: 400 (not 500), and nothing stored or dropped."""
    sender.push(cb_client, {"EventType": "user_add_org", "UserId": ["u1"]})
    before = entries(cb_app)
    query, body = sender.request(sender.encrypt(LONE_SURROGATE))
    response = cb_client.post(URL, query_string=query, json=body)
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "decrypt_failed"
    assert "900001" in error["message"]
    assert "900001" in caplog.text
    assert entries(cb_app) == before
    assert len(list(get_runtime(cb_app).store.scan_iter(match="*callback-seen*"))) == 1


def test_deeply_nested_body_is_an_invalid_request(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    """A depth bomb as the body: 400 invalid_request, not a RecursionError (500)."""
    query, _ = sender.request(_good(sender))
    response = cb_client.post(URL, query_string=query, data=b"[" * 5000 + b"]" * 5000, content_type="application/json")
    assert response.status_code == 400, response.get_data(as_text=True)[:200]
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert stream_len(cb_app) == 0


def test_stale_timestamp_hint_names_the_clock(cb_client: FlaskClient, sender: Sender) -> None:
    query, body = _skewed(-3600, "s")(sender)
    error = cb_client.post(URL, query_string=query, json=body).get_json()["error"]
    assert "behind" in error["message"]
    assert "clock" in error["hint"].lower()


def test_unknown_corp(cb_client: FlaskClient, sender: Sender) -> None:
    query, body = sender.request(_good(sender))
    response = cb_client.post("/ding/callback/dingnobody", query_string=query, json=body)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_corp"


def test_corp_without_callback_registration(app: Flask, sender: Sender) -> None:
    """The demo corp as the app fixture registers it: no callback token or AES key."""
    response = sender.push(app.test_client(), {"EventType": "user_add_org"})
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "unknown_corp"
    assert "--callback-token" in error["hint"]
    assert stream_len(app) == 0


def test_get_is_not_allowed(cb_client: FlaskClient) -> None:
    assert cb_client.get(URL).status_code == 405


# --- duplicates and replays -------------------------------------------------------------------------------


def test_redelivered_event_is_stored_once(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    """DingTalk's retry: same payload, new timestamp, nonce, signature (and new random bytes)."""
    event = {"EventType": "user_modify_org", "UserId": ["u9"], "TimeStamp": "1700000000123"}
    for _ in range(3):
        response = sender.push(cb_client, event)
        assert response.status_code == 200
        assert sender.check_reply(response.get_json()) == "success"
    assert stream_len(cb_app) == 1


def test_same_payload_with_other_key_order_is_a_duplicate(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender
) -> None:
    sender.push(cb_client, {"EventType": "org_dept_remove", "DeptId": [3], "TimeStamp": "1"})
    sender.push(cb_client, {"TimeStamp": "1", "DeptId": [3], "EventType": "org_dept_remove"})
    assert stream_len(cb_app) == 1


def test_distinct_events_are_all_stored(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    for n in range(5):
        sender.push(cb_client, {"EventType": "user_add_org", "UserId": [f"u{n}"], "TimeStamp": "1"})
    assert stream_len(cb_app) == 5


def test_replayed_request_is_refused(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    query, body = sender.request(sender.encrypt(json.dumps({"EventType": "user_add_org", "UserId": ["u1"]})))
    first = cb_client.post(URL, query_string=query, json=body)
    assert first.status_code == 200
    again = cb_client.post(URL, query_string=query, json=body)
    assert again.status_code == 403
    error = again.get_json()["error"]
    assert error["code"] == "signature_invalid"
    assert "replayed" in error["message"].lower()
    assert stream_len(cb_app) == 1


def test_replay_guard_expires_after_two_windows(cb_app: Flask, cb_client: FlaskClient, sender: Sender) -> None:
    query, body = sender.request(_good(sender))
    assert cb_client.post(URL, query_string=query, json=body).status_code == 200
    store = get_runtime(cb_app).store
    [key] = store.scan_iter(match="*callback-seen*")
    assert key.startswith(f"dtgw:v1:{{{DEMO_CORPID}}}:")
    assert 0 < store.ttl(key) <= 2 * 300


# --- events that keep links fresh -------------------------------------------------------------------------


def login(client: FlaskClient, sim: Simulator, unionid: str) -> dict[str, Any]:
    code = sim.mint_auth_code(DEMO_CORPID, unionid)
    response = client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.mark.parametrize("kind", ["user_leave_org", "user_modify_org"])
def test_user_event_makes_the_next_login_miss_the_link_cache(
    cb_client: FlaskClient, sender: Sender, sim: Simulator, kind: str
) -> None:
    assert login(cb_client, sim, EMPLOYEE["unionid"])["userid"] == EMPLOYEE["userid"]
    login(cb_client, sim, EXTERNAL["unionid"])
    mapped = sim.calls("user/getUseridByUnionid")
    login(cb_client, sim, EMPLOYEE["unionid"])
    assert sim.calls("user/getUseridByUnionid") == mapped  # cached

    response = sender.push(cb_client, {"EventType": kind, "UserId": [EMPLOYEE["userid"]], "TimeStamp": "17"})
    assert response.status_code == 200

    assert login(cb_client, sim, EMPLOYEE["unionid"])["userid"] == EMPLOYEE["userid"]
    assert sim.calls("user/getUseridByUnionid") == mapped + 1  # the employee's link was dropped
    login(cb_client, sim, EXTERNAL["unionid"])
    assert sim.calls("user/getUseridByUnionid") == mapped + 1  # the other follower's was not


def test_redelivered_leave_event_drops_links_again(cb_client: FlaskClient, sender: Sender, sim: Simulator) -> None:
    """Effects run on every delivery: the first may have been stored but never acknowledged."""
    sender.push(cb_client, LEAVE)
    login(cb_client, sim, EMPLOYEE["unionid"])
    mapped = sim.calls("user/getUseridByUnionid")
    sender.push(cb_client, LEAVE)  # a duplicate: not stored again, links dropped anyway
    login(cb_client, sim, EMPLOYEE["unionid"])
    assert sim.calls("user/getUseridByUnionid") == mapped + 1


def test_other_events_leave_links_alone(cb_client: FlaskClient, sender: Sender, sim: Simulator) -> None:
    login(cb_client, sim, EMPLOYEE["unionid"])
    mapped = sim.calls("user/getUseridByUnionid")
    sender.push(cb_client, {"EventType": "user_add_org", "UserId": [EMPLOYEE["userid"]]})
    login(cb_client, sim, EMPLOYEE["unionid"])
    assert sim.calls("user/getUseridByUnionid") == mapped


# --- what is never written down ---------------------------------------------------------------------------


def test_payload_secrets_never_reach_logs_store_or_response(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    event = {"EventType": "tmp_auth_code", "AuthCode": "AUTHCODE-s3cr3t", "AuthCorpId": "dingAuthCorp"}
    ticket = {"EventType": "suite_ticket", "SuiteTicket": "TICKET-s3cr3t", "TimeStamp": "1700000000000"}
    bodies = [sender.push(cb_client, event).get_data(as_text=True), sender.push(cb_client, ticket).get_data(True)]
    bad = sender.request(sender.encrypt(json.dumps(event), receiver_key=b"other"))
    bodies.append(cb_client.post(URL, query_string=bad[0], json=bad[1]).get_data(as_text=True))
    dump = store_dump(get_runtime(cb_app).store)
    for text in (caplog.text, dump, *bodies):
        for secret in ("AUTHCODE-s3cr3t", "TICKET-s3cr3t", CALLBACK_TOKEN, AES_KEY, TEST_SECRET_KEY):
            assert secret not in text
    assert "dingAuthCorp" in dump  # the ids are what is kept
    assert "900010" in caplog.text  # the reference encryptor's code is logged for the refusal


def test_callbacks_are_counted(cb_client: FlaskClient, sender: Sender) -> None:
    sender.push(cb_client, {"EventType": "chat_disband", "ChatId": "c1"})
    sender.push(cb_client, {"EventType": "chat_disband", "ChatId": "c1"})
    metrics = cb_client.get("/metrics").get_data(as_text=True)
    assert 'dtgw_callbacks_total{event_type="chat_disband",outcome="stored"}' in metrics
    assert 'dtgw_callbacks_total{event_type="chat_disband",outcome="duplicate"}' in metrics


# --- properties -------------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_EVENT_TYPES = st.sampled_from(["user_add_org", "org_dept_modify", "chat_update_title", "custom_thing"]) | st.text(
    max_size=30
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=_EVENT_TYPES, extra=st.dictionaries(st.text(min_size=1, max_size=10), _JSON, max_size=5))
def test_any_authentic_event_is_acknowledged_and_recorded_once(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender, kind: str, extra: dict[str, Any]
) -> None:
    event = {**extra, "EventType": kind, "Nonce": secrets.token_hex(8)}  # a fresh event each example
    before = stream_len(cb_app)
    for _ in range(2):
        response = sender.push(cb_client, event)
        assert response.status_code == 200, response.get_json()
        assert sender.check_reply(response.get_json()) == "success"
    assert stream_len(cb_app) == before + 1


_QUERY_VALUES = st.text(max_size=40) | st.from_regex(r"[0-9]{1,20}", fullmatch=True)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    query=st.dictionaries(
        st.sampled_from(["signature", "msg_signature", "timestamp", "timeStamp", "nonce", "other"]), _QUERY_VALUES
    ),
    body=st.binary(max_size=200) | _JSON.map(lambda v: json.dumps(v).encode()),
)
def test_garbage_is_refused_cleanly_and_never_recorded(
    cb_app: Flask, cb_client: FlaskClient, query: dict[str, str], body: bytes
) -> None:
    response = cb_client.post(URL, query_string=query, data=body, content_type="application/json")
    assert response.status_code in (400, 403)
    assert response.get_json()["error"]["code"] in ("invalid_request", "signature_invalid", "decrypt_failed")
    assert stream_len(cb_app) == 0


# --- large pushes (issue 15 item 8) ------------------------------------------------------------------------


def many_users(count: int, kind: str = "user_leave_org") -> dict[str, Any]:
    """A push about `count` people, with userids as long as DingTalk's (up to 20 digits)."""
    return {"EventType": kind, "UserId": [f"{10**19 + i:020d}" for i in range(count)], "TimeStamp": "1700000000000"}


def push_body(sender: Sender, event: dict[str, Any]) -> tuple[dict[str, str], bytes]:
    query, body = sender.request(sender.encrypt(json.dumps(event)))
    return query, json.dumps(body).encode()


def test_a_push_about_600_leavers_is_acknowledged_and_recorded(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender
) -> None:
    query, body = push_body(sender, many_users(600))
    # 14 KB of event JSON is ~19 KB of body once encrypted and base64-encoded: over the 16 KiB other routes take.
    assert len(body) > int(cb_app.config["GATEWAY_MAX_BODY"])
    response = cb_client.post(URL, query_string=query, data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()  # old code: 413, and 413 again on every retry
    assert sender.check_reply(response.get_json()) == "success"
    [stored] = entries(cb_app)
    assert len(json.loads(stored["ids"])["UserId"]) == 600


def test_pushes_up_to_the_callback_limit_are_taken_and_larger_ones_get_json_413(
    cb_app: Flask, cb_client: FlaskClient, sender: Sender
) -> None:
    limit = int(cb_app.config["GATEWAY_CALLBACK_MAX_BODY"])
    assert limit == 1024 * 1024
    # Not a leave event, so that the test times the limit and not dropping 31,000 links.
    query, body = push_body(sender, many_users(31_000, kind="user_add_org"))
    assert 0.9 * limit < len(body) <= limit
    response = cb_client.post(URL, query_string=query, data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()

    query, body = push_body(sender, many_users(33_500, kind="user_add_org"))
    assert len(body) > limit
    response = cb_client.post(URL, query_string=query, data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "invalid_request"
    assert stream_len(cb_app) == 1


def test_the_callback_limit_is_configurable_and_the_small_limit_stays_elsewhere(
    sim_server: SimulatorServer, sender: Sender
) -> None:
    from app import create_app

    app = with_callback(create_app(make_config(sim_server, GATEWAY_CALLBACK_MAX_BODY=8 * 1024)))
    client = app.test_client()
    query, body = push_body(sender, many_users(300))
    assert 8 * 1024 < len(body) < 16 * 1024
    response = client.post(URL, query_string=query, data=body, content_type="application/json")
    assert response.status_code == 413 and response.get_json()["error"]["code"] == "invalid_request"
    # Every other route keeps GATEWAY_MAX_BODY (16 KiB): the callback's larger limit is its own.
    big_login = {"corpid": DEMO_CORPID, "code": "x" * 20_000}
    assert client.post("/channel/login", json=big_login).status_code == 413
    get_runtime(app).close()
