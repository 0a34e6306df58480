"""`flask client add | list | remove`: the OpenID Connect provider's relying parties (issue 18, item 2)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from identity.clients import hash_secret
from sandbox.demo import DEMO_CORPID
from tests.helpers import store_dump
from web.runtime import get_runtime

REDIRECT = "https://rp.example.com/oidc/callback"


def add(runner: Any, client_id: str = "rp1", *extra: str, corp: str = DEMO_CORPID) -> Any:
    return runner.invoke(args=["client", "add", client_id, "--corp", corp, "--redirect-uri", REDIRECT, *extra])


def secret_of(output: str) -> str:
    """The secret on its own `client_secret: SECRET` line (the one way `add` gives it)."""
    lines = [line for line in output.splitlines() if line.startswith("client_secret: ")]
    assert len(lines) == 1, output
    return lines[0].removeprefix("client_secret: ")


def test_a_confidential_client_gets_a_secret_once_and_the_store_keeps_only_its_hash(app: Any, runner: Any) -> None:
    result = add(runner, "rp1", "--redirect-uri", "http://127.0.0.1:8765/cb")
    assert result.exit_code == 0, result.output
    assert "Registered confidential client rp1" in result.output
    secret = secret_of(result.output)
    assert re.fullmatch(r"[A-Za-z0-9_\-]{43}", secret)  # 32 random bytes
    client = get_runtime(app).clients.get("rp1")
    assert client is not None and client.corpid == DEMO_CORPID and not client.public
    assert client.redirect_uris == (REDIRECT, "http://127.0.0.1:8765/cb")
    assert client.check_secret(secret) and not client.check_secret(secret[:-1] + "x") and not client.check_secret("")
    dump = store_dump(get_runtime(app).store)
    assert secret not in dump and hash_secret(secret) in dump
    listed = runner.invoke(args=["client", "list"])
    as_json = runner.invoke(args=["client", "list", "--json"])
    assert "rp1  confidential  corp=" + DEMO_CORPID in listed.output
    assert json.loads(as_json.output)[0]["redirect_uris"] == [REDIRECT, "http://127.0.0.1:8765/cb"]
    for output in (listed.output, as_json.output):
        assert secret not in output and hash_secret(secret) not in output and "sha256:" not in output


def test_a_public_client_has_no_secret(app: Any, runner: Any) -> None:
    result = add(runner, "spa", "--public")
    assert result.exit_code == 0, result.output
    assert "Registered public client spa" in result.output and "client_secret" not in result.output
    client = get_runtime(app).clients.get("spa")
    assert client is not None and client.public and client.secret_hash is None
    assert not client.check_secret("anything")


def test_replacing_a_client_says_so_and_the_old_secret_stops_working(app: Any, runner: Any) -> None:
    first = secret_of(add(runner).output)
    again = add(runner)
    assert again.exit_code == 0 and "Replaced confidential client rp1" in again.output
    second = secret_of(again.output)
    client = get_runtime(app).clients.get("rp1")
    assert client is not None and second != first
    assert client.check_secret(second) and not client.check_secret(first)


def test_remove(app: Any, runner: Any) -> None:
    add(runner)
    removed = runner.invoke(args=["client", "remove", "rp1"])
    assert removed.exit_code == 0 and "Removed client rp1" in removed.output
    assert get_runtime(app).clients.get("rp1") is None
    assert "No clients registered" in runner.invoke(args=["client", "list"]).output
    again = runner.invoke(args=["client", "remove", "rp1"])
    assert again.exit_code != 0 and "not registered" in again.output


def test_the_corp_must_be_registered(app: Any, runner: Any) -> None:
    result = add(runner, corp="dingnobody01")
    assert result.exit_code != 0 and "corp dingnobody01 is not registered" in result.output
    assert get_runtime(app).clients.get("rp1") is None


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("http://rp.example.com/cb", "loopback interface only"),
        ("https://rp.example.com/cb#frag", "fragment"),
        ("javascript:alert(1)", "must be an https:// URL"),
        ("data:text/html,hi", "must be an https:// URL"),
        ("/relative/cb", "must be an https:// URL"),
        ("https://user@rp.example.com/cb", "user name or password"),
        ("https://rp.example.com/c b", "a space"),
    ],
)
def test_redirect_uris_are_checked(app: Any, runner: Any, uri: str, why: str) -> None:
    result = runner.invoke(args=["client", "add", "rp1", "--corp", DEMO_CORPID, "--redirect-uri", uri])
    assert result.exit_code != 0 and why in result.output
    assert get_runtime(app).clients.get("rp1") is None


@pytest.mark.parametrize(
    "uri", ["https://rp.example.com/cb?x=1", "http://127.0.0.1:9000/cb", "http://[::1]/cb", "com.example.app:/cb"]
)
def test_accepted_redirect_uris(app: Any, runner: Any, uri: str) -> None:
    result = runner.invoke(args=["client", "add", "rp1", "--corp", DEMO_CORPID, "--redirect-uri", uri])
    assert result.exit_code == 0, result.output
    client = get_runtime(app).clients.get("rp1")
    assert client is not None and client.redirect_uris == (uri,)


@pytest.mark.parametrize("client_id", ["has space", "a/b", "x" * 65, "é"])
def test_client_ids_are_checked(app: Any, runner: Any, client_id: str) -> None:
    result = runner.invoke(args=["client", "add", client_id, "--corp", DEMO_CORPID, "--redirect-uri", REDIRECT])
    assert result.exit_code != 0 and "client id must be" in result.output


def test_the_redirect_uri_is_required(app: Any, runner: Any) -> None:
    result = runner.invoke(args=["client", "add", "rp1", "--corp", DEMO_CORPID])
    assert result.exit_code != 0 and "--redirect-uri" in result.output


def test_removing_a_corp_names_the_clients_that_still_point_at_it(app: Any, runner: Any) -> None:
    assert add(runner, "rp1").exit_code == 0
    assert add(runner, "spa", "--public").exit_code == 0
    result = runner.invoke(args=["corp", "remove", DEMO_CORPID])
    assert result.exit_code == 0 and f"Removed corp {DEMO_CORPID}." in result.output
    assert "OpenID Connect clients still name" in result.output and "rp1, spa" in result.output
    assert {c["client_id"] for c in json.loads(runner.invoke(args=["client", "list", "--json"]).output)} == {
        "rp1",
        "spa",
    }
