"""The small rules with one home each (gateway/validation.py, oapi/tokens.py, oapi/callback_crypto.py) hold for
every place that applies them."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import ValidationError

from channel.schemas import ConfigQuery
from corp.schemas import CorpRegistrationSchema
from gateway.errors import InvalidRequest
from gateway.validation import json_object
from oapi.callback_crypto import BadAesKey, CallbackCrypto
from oapi.channel import ChannelClient
from oapi.corp import CorpClient
from oapi.credentials import CHANNEL_TICKET, CHANNEL_TOKEN, CORP_TOKEN, PIPELINES

AES_KEY = "a" * 43
REGISTRATION = {
    "corpid": "dingcorp",
    "corp_secret": "s1",
    "channel_secret": "s2",
    "agent_id": "1000001",
    "origins": ["https://h5.example.com"],
}


def page_accepts(corpid: str, agentid: str = "1000001") -> bool:
    try:
        ConfigQuery().load({"corpid": corpid, "agentid": agentid})
    except ValidationError:
        return False
    return True


def registration_accepts(**fields: str) -> bool:
    try:
        CorpRegistrationSchema().load({**REGISTRATION, **fields})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(
    "corpid", ["dingcorp", "ding.corp-1_x", "a" * 64, "", "a" * 65, "ding corp", "ding/corp", "dingcörp"]
)
def test_the_page_and_the_registration_take_the_same_corpids(corpid: str) -> None:
    assert page_accepts(corpid) == registration_accepts(corpid=corpid)


@pytest.mark.parametrize("agentid", ["1", "1000001", "9" * 20, "9" * 21, "", "12a", "-1", "1.0"])
def test_the_page_and_the_registration_take_the_same_agentid_shape(agentid: str) -> None:
    # Registration is stricter on meaning (0 is refused there); the shape is the same rule.
    assert page_accepts("dingcorp", agentid) == registration_accepts(agent_id=agentid)


@pytest.mark.parametrize("key", [AES_KEY, "a" * 42, "a" * 44, AES_KEY[:-1] + "+", AES_KEY + "\n"])
def test_registration_takes_exactly_the_aes_keys_the_callback_crypto_takes(key: str) -> None:
    try:
        CallbackCrypto("token", key, "dingcorp")
        crypto_takes = True
    except BadAesKey:
        crypto_takes = False
    assert registration_accepts(callback_token="t", aes_key=key) == crypto_takes


@pytest.mark.parametrize(
    ("url", "taken"),
    [
        ("https://app.example.com/welcome?x=1#top", True),
        ("http://127.0.0.1:8080/", True),
        ("https://evil.example\\@app.example.com/", False),  # a browser goes to evil.example
        ("https://user@app.example.com/", False),
        ("ftp://app.example.com/", False),
        ("/welcome", False),
    ],
)
def test_a_landing_url_is_read_as_the_browser_going_there_reads_it(url: str, taken: bool) -> None:
    assert registration_accepts(landing_url=url) == taken


@pytest.mark.parametrize("data", [None, [], "x", 1, True, [{"corpid": "c"}]])
def test_anything_but_a_json_object_is_invalid_request(data: Any) -> None:
    with pytest.raises(InvalidRequest, match="The callback body is not a JSON object"):
        json_object(data, what="callback body")


def test_a_json_object_passes_as_it_is() -> None:
    body = {"corpid": "c"}
    assert json_object(body) is body


def test_each_pipeline_has_one_set_of_names() -> None:
    assert [(p.key, p.name, p.app) for p in PIPELINES] == [
        ("channel:token", "channel_token", "channel"),
        ("corp:token", "corp_token", "corp"),
        ("channel:ticket", "channel_ticket", "channel"),
    ]
    assert ChannelClient.token_pipeline is CHANNEL_TOKEN and CorpClient.token_pipeline is CORP_TOKEN
    assert CHANNEL_TICKET.api == "channel/get_channel_jsapi_ticket"
