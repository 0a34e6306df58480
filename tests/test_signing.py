"""dd.config signing: the published vectors and the normalisation table of dingtalk-oapi.md §4."""

from __future__ import annotations

import hashlib

import pytest

from oapi.signing import new_nonce, normalize_url, sign, sign_config, timestamp_ms

TICKET = "sM4AOVdWfPE4DxkXGEs8VMCPGGVi4C3VM0P37wVUCFvkVAy_90u5h9nbSlYy3-Sl-HhTdfl2fzFy1AOcHKP7qg"
NONCE = "Wm3WZYTPz0wzccnW"
STAMP = "1414587457"


@pytest.mark.parametrize(
    ("url", "signature"),
    [
        ("http://mp.weixin.qq.com?params=value", "0f9de62fce790f9a083d5c99e95740ceb90c27ed"),
        ("http://mp.weixin.qq.com", "f4d90daf4b3bca3078ab155816175ba34c443a7b"),
    ],
)
def test_published_sha1_vectors(url: str, signature: str) -> None:
    assert sign(TICKET, NONCE, STAMP, url) == signature
    assert sign(TICKET, NONCE, STAMP, url, "sha1") == signature


def test_sha256_is_the_same_plain_text_hashed_differently() -> None:
    plain = f"jsapi_ticket={TICKET}&noncestr={NONCE}&timestamp={STAMP}&url=http://mp.weixin.qq.com"
    assert sign(TICKET, NONCE, STAMP, "http://mp.weixin.qq.com", "sha256") == hashlib.sha256(plain.encode()).hexdigest()


@pytest.mark.parametrize(
    ("page", "signed"),
    [
        (
            "https://abc.com?url=http%3A%2F%2Fabc.com%2Fsomewhere&a=1",
            "https://abc.com?url=http://abc.com/somewhere&a=1",
        ),
        ("http://example.com/path%20x/page?q=a+b&c=%E4%B8%AD#frag", "http://example.com/path%20x/page?q=a b&c=中"),
        ("HTTP://Example.COM:80/a?x=1", "http://Example.COM:80/a?x=1"),
        ("https://user:pw@example.com:8443/p?x=1#/route?y=2", "https://user:pw@example.com:8443/p?x=1"),
        # and the cases around them
        ("https://h5.example.com/", "https://h5.example.com/"),
        ("https://h5.example.com/#/spa/route", "https://h5.example.com/"),
        ("https://h5.example.com/p?", "https://h5.example.com/p?"),
        ("https://h5.example.com/p?a=%2B", "https://h5.example.com/p?a=+"),
    ],
)
def test_normalisation_table(page: str, signed: str) -> None:
    assert normalize_url(page) == signed


def test_nonce_is_fresh_and_timestamp_in_ms() -> None:
    nonces = {new_nonce() for _ in range(200)}
    assert len(nonces) == 200
    assert all(len(n) == 16 and n.isalnum() for n in nonces)
    assert len(timestamp_ms()) == 13


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_sign_config_signs_what_it_returns(algorithm: str) -> None:
    url = "https://h5.example.com/app?x=1"
    config = sign_config(corpid="dingcorp", agent_id="1000001", ticket=TICKET, url=url, algorithm=algorithm)
    assert {k: config[k] for k in ("corpId", "agentId", "type", "url")} == {
        "corpId": "dingcorp",
        "agentId": "1000001",
        "type": 1,
        "url": url,
    }
    assert config["signature"] == sign(TICKET, config["nonceStr"], config["timeStamp"], url, algorithm)
    assert sign_config(corpid="c", agent_id="1", ticket=TICKET, url=url)["nonceStr"] != config["nonceStr"]
