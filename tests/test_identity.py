"""Session tokens a relying system verifies without any secret of the gateway (issue 18, item 1): ES256 keys made
and sealed by the gateway, the JWKS, `aud` = corpid, `iss`, and `flask keys rotate`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from werkzeug.serving import make_server

from identity.keys import RING, KeyRing
from kit.sealing import Sealer
from sandbox.demo import DEMO_CORPID
from tests.helpers import EMPLOYEE, TEST_SECRET_KEY, make_config, register_demo, store_dump
from web.runtime import get_runtime

ISSUER = "https://login.example.com"


@pytest.fixture
def served(sim_server: Any, real_redis: Any, redis_url: str) -> Iterator[tuple[Any, str]]:
    """The gateway on a real Redis, served over HTTP on a loopback port (PyJWKClient fetches the JWKS itself)."""
    from app import create_app

    app = create_app(make_config(sim_server, REDIS_URL=redis_url, GATEWAY_ISSUER=ISSUER))
    register_demo(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    get_runtime(app).close()


def sign_in(app: Any, sim: Any, person: dict[str, Any] = EMPLOYEE) -> str:
    code = sim.mint_auth_code(DEMO_CORPID, person["unionid"])
    resp = app.test_client().post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    assert resp.status_code == 200, resp.get_json()
    return str(resp.get_json()["token"])


def verify(base: str, token: str, audience: str = DEMO_CORPID) -> dict[str, Any]:
    """What the README tells the enterprise's system to do: PyJWKClient + jwt.decode, a few lines."""
    key = jwt.PyJWKClient(f"{base}/.well-known/jwks.json").get_signing_key_from_jwt(token)
    return jwt.decode(token, key.key, algorithms=["ES256"], audience=audience, issuer=ISSUER)


pytestmark = pytest.mark.redis


def test_a_session_token_verifies_with_pyjwkclient(served: tuple[Any, str], sim_server: Any) -> None:
    app, base = served
    token = sign_in(app, sim_server.sim)
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    claims = verify(base, token)
    assert (claims["iss"], claims["aud"], claims["sub"], claims["userid"]) == (
        ISSUER,
        DEMO_CORPID,
        EMPLOYEE["userid"],
        EMPLOYEE["userid"],
    )
    for name in ("corpid", "kind", "unionid", "openid", "follower_id", "contact_type", "linked", "iat", "exp"):
        assert name in claims


def test_a_token_of_one_corp_fails_where_another_is_expected(served: tuple[Any, str], sim_server: Any) -> None:
    app, base = served
    token = sign_in(app, sim_server.sim)
    with pytest.raises(jwt.InvalidAudienceError):
        verify(base, token, audience="dingothercorp0001")


def test_the_jwks_holds_public_keys_only(served: tuple[Any, str]) -> None:
    app, _ = served
    resp = app.test_client().get("/.well-known/jwks.json", headers={"Origin": "https://spa.example.com"})
    assert resp.headers["Access-Control-Allow-Origin"] == "*"  # a browser RP may fetch it
    keys = resp.get_json()["keys"]
    assert len(keys) == 1
    assert {k["kty"] for k in keys} == {"EC"} and {k["alg"] for k in keys} == {"ES256"}
    assert all("d" not in k for k in keys)


def test_rotation_keeps_old_tokens_valid_and_signs_new_ones_with_the_new_key(
    served: tuple[Any, str], sim_server: Any
) -> None:
    app, base = served
    old = sign_in(app, sim_server.sim)
    old_kid = jwt.get_unverified_header(old)["kid"]
    result = app.test_cli_runner().invoke(args=["keys", "rotate"])
    assert result.exit_code == 0 and f"previous key {old_kid} stays published" in result.output
    new = sign_in(app, sim_server.sim)
    new_kid = jwt.get_unverified_header(new)["kid"]
    assert new_kid != old_kid and new_kid in result.output
    assert verify(base, old)["userid"] == verify(base, new)["userid"] == EMPLOYEE["userid"]
    listed = app.test_cli_runner().invoke(args=["keys", "list"]).output
    assert f"{new_kid}  current" in listed and f"{old_kid}  retired" in listed


def test_a_retired_key_leaves_the_jwks_once_its_tokens_have_expired(real_redis: Any) -> None:
    ring = KeyRing(real_redis, Sealer(TEST_SECRET_KEY), max_token_ttl=100)
    first = ring.signing_key().kid
    second, previous = ring.rotate(now=1000.0)
    assert previous == first
    assert [k["kid"] for k in ring.jwks(now=1099.0)["keys"]] == [second, first]
    assert [k["kid"] for k in ring.jwks(now=1101.0)["keys"]] == [second]
    third, _ = ring.rotate(now=1200.0)  # prunes the first key from the store
    assert not real_redis.hexists(RING, f"key:{first}")
    assert [k["kid"] for k in ring.jwks(now=1201.0)["keys"]] == [third, second]


def test_every_worker_signs_with_a_rotated_key_within_10_s(real_redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import identity.keys as keys

    sealer = Sealer(TEST_SECRET_KEY)
    worker, admin = KeyRing(real_redis, sealer, max_token_ttl=7200), KeyRing(real_redis, sealer, max_token_ttl=7200)
    before = worker.signing_key().kid
    new, _ = admin.rotate()
    clock = keys.time.monotonic()
    monkeypatch.setattr(keys.time, "monotonic", lambda: clock + 10.0)
    assert worker.signing_key().kid == new != before


def test_workers_racing_to_make_the_first_key_agree_on_one(real_redis: Any) -> None:
    sealer = Sealer(TEST_SECRET_KEY)
    rings = [KeyRing(real_redis, sealer, max_token_ttl=7200) for _ in range(8)]
    kids: list[str] = []
    barrier = threading.Barrier(len(rings))

    def first(ring: KeyRing) -> None:
        barrier.wait()
        kids.append(ring.signing_key().kid)

    threads = [threading.Thread(target=first, args=(r,)) for r in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(kids) == len(rings) and len(set(kids)) == 1
    assert len(rings[0].jwks()["keys"]) == 1  # the losers' keys were dropped


def test_no_private_key_in_the_store_or_the_logs(
    served: tuple[Any, str], sim_server: Any, real_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app, _ = served
    sign_in(app, sim_server.sim)
    app.test_cli_runner().invoke(args=["keys", "rotate"])
    sign_in(app, sim_server.sim)
    dump = store_dump(real_redis)
    for key in (k.kid for k in get_runtime(app).keys.published()):
        assert key in dump  # the scan sees the ring
    private = get_runtime(app).keys.signing_key().private_key
    scalar = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)["d"]
    assert "PRIVATE KEY" not in dump and scalar not in dump
    assert "PRIVATE KEY" not in caplog.text and scalar not in caplog.text


def test_a_key_sealed_under_another_secret_is_a_clean_error(served: tuple[Any, str], sim_server: Any) -> None:
    from app import create_app

    app, _ = served
    sign_in(app, sim_server.sim)  # the ring now holds a key sealed under TEST_SECRET_KEY
    other = create_app(
        make_config(sim_server, REDIS_URL=app.config["REDIS_URL"], GATEWAY_SECRET_KEY="another-secret-key-0123456789")
    )
    try:
        resp = other.test_client().get("/.well-known/jwks.json")
        assert resp.status_code == 500 and resp.get_json()["error"]["code"] == "internal_error"
        assert "flask keys rotate" in resp.get_json()["error"]["hint"]
    finally:
        get_runtime(other).close()
