"""`flask corp add | list | remove | check`: validation, sealing, and the self-test's diagnoses."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.runtime import get_runtime
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from tests.conftest import store_dump

AES_KEY = "4g5j64qlyl3zvetqxz5jiocdr586fn2zvjpa8zls3ij"
GOOD = [
    "corp",
    "add",
    "dingnew01",
    "--corp-secret",
    "CorpSecretValue123",
    "--channel-secret",
    "ChannelSecretValue456",
    "--agent-id",
    "42",
    "--origin",
    "https://h5.example.com",
    "--origin",
    "http://localhost:8080",
    "--callback-token",
    "CallbackTokenValue789",
    "--aes-key",
    AES_KEY,
]


def snapshot(app: Any) -> str:
    return store_dump(get_runtime(app).store)


def test_add_list_remove(app: Any, runner: Any) -> None:
    result = runner.invoke(args=GOOD)
    assert result.exit_code == 0, result.output
    assert "Registered corp dingnew01" in result.output
    listed = runner.invoke(args=["corp", "list"])
    assert "dingnew01" in listed.output and "agent=42" in listed.output and "callback on" in listed.output
    as_json = runner.invoke(args=["corp", "list", "--json"])
    dump = snapshot(app)
    for secret in ("CorpSecretValue123", "ChannelSecretValue456", "CallbackTokenValue789", AES_KEY):
        assert secret not in listed.output and secret not in as_json.output
        assert secret not in dump  # sealed at rest
    corp = get_runtime(app).registry.get("dingnew01")
    assert corp.corp_secret == "CorpSecretValue123" and corp.origins == (
        "https://h5.example.com",
        "http://localhost:8080",
    )
    assert "CorpSecretValue123" not in repr(corp)
    assert runner.invoke(args=["corp", "remove", "dingnew01"]).exit_code == 0
    assert "dingnew01" not in runner.invoke(args=["corp", "list"]).output
    again = runner.invoke(args=["corp", "remove", "dingnew01"])
    assert again.exit_code != 0 and "not registered" in again.output


def swap(args: list[str], old: str, new: str) -> list[str]:
    return [new if a == old else a for a in args]


def replace(args: list[str], flag: str, value: str | None) -> list[str]:
    out = list(args)
    i = out.index(flag)
    if value is None:
        del out[i : i + 2]
    else:
        out[i + 1] = value
    return out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (swap(GOOD, "dingnew01", ""), "corpid"),
        (swap(GOOD, "dingnew01", "bad corp id"), "corpid"),
        (replace(GOOD, "--agent-id", "forty-two"), "agent"),
        (replace(GOOD, "--agent-id", None), "--agent-id is required"),
        (replace(GOOD, "--corp-secret", None), "--corp-secret is required"),
        (replace(GOOD, "--channel-secret", None), "--channel-secret is required"),
        (replace(GOOD, "--corp-secret", ""), "--corp-secret is required"),
        (replace(replace(GOOD, "--origin", None), "--origin", None), "--origin"),
        (swap(GOOD, "https://h5.example.com", "h5.example.com"), "origin"),
        (swap(GOOD, "https://h5.example.com", "https://h5.example.com/path"), "origin"),
        (swap(GOOD, "https://h5.example.com", "ftp://h5.example.com"), "origin"),
        (swap(GOOD, "https://h5.example.com", "https://h5.example.com:99999"), "origin"),
        (swap(GOOD, "https://h5.example.com", "https://user@h5.example.com"), "origin"),
        (swap(GOOD, AES_KEY, "short"), "aes"),
        (replace(GOOD, "--aes-key", None), "--callback-token and --aes-key go together"),
        (GOOD + ["--landing-url", "not a url"], "landing"),
        (GOOD + ["--sign-hash", "md5"], "sign-hash"),
    ],
)
def test_bad_input_writes_nothing(app: Any, runner: Any, args: list[str], message: str) -> None:
    before = snapshot(app)
    result = runner.invoke(args=args)
    assert result.exit_code != 0
    output = result.output.strip()
    assert message.lower() in output.lower()
    assert "Traceback" not in output
    assert len([line for line in output.splitlines() if line.strip()]) <= 1 or "Usage:" in output
    assert snapshot(app) == before


def test_check_ok(runner: Any) -> None:
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok ") == 2


def register(
    runner: Any,
    corpid: str = DEMO_CORPID,
    corp_secret: str = DEMO_CORP_SECRET,
    channel_secret: str = DEMO_CHANNEL_SECRET,
) -> None:
    assert (
        runner.invoke(
            args=[
                "corp",
                "add",
                corpid,
                "--corp-secret",
                corp_secret,
                "--channel-secret",
                channel_secret,
                "--agent-id",
                DEMO_AGENT_ID,
                "--origin",
                "https://a.example",
            ]
        ).exit_code
        == 0
    )


@pytest.mark.parametrize(
    ("setup", "expect"),
    [
        ("swapped", "swapped"),
        ("same", "same secret"),
        ("wrong_corp_secret", "corp secret was refused"),
        ("wrong_corpid", "Wrong corpid"),
        ("whitelist", "Add 203.0.113.7 to the app's IP whitelist"),
    ],
)
def test_check_names_the_mistake(runner: Any, sim: Any, setup: str, expect: str) -> None:
    corpid = DEMO_CORPID
    if setup == "swapped":
        register(runner, corp_secret=DEMO_CHANNEL_SECRET, channel_secret=DEMO_CORP_SECRET)
    elif setup == "same":
        register(runner, corp_secret=DEMO_CHANNEL_SECRET, channel_secret=DEMO_CHANNEL_SECRET)
    elif setup == "wrong_corp_secret":
        register(runner, corp_secret="not-the-secret")
    elif setup == "wrong_corpid":
        corpid = "dingtypo"
        register(runner, corpid=corpid)
    else:
        sim.set_ip_blocked(DEMO_CORPID)
    result = runner.invoke(args=["corp", "check", corpid])
    assert result.exit_code == 1
    assert "FAIL" in result.output and expect in result.output
    for secret in (DEMO_CORP_SECRET, DEMO_CHANNEL_SECRET):
        assert secret not in result.output


def test_check_unknown_corp(runner: Any) -> None:
    result = runner.invoke(args=["corp", "check", "nosuch"])
    assert result.exit_code != 0 and "not registered" in result.output


@pytest.mark.redis
def test_no_plaintext_secret_in_real_redis(redis_app: Any, real_redis: Any) -> None:
    runner = redis_app.test_cli_runner()
    assert runner.invoke(args=GOOD).exit_code == 0
    # Fill the caches too: tokens and tickets are sealed at rest like the secrets.
    client = redis_app.test_client()
    from urllib.parse import quote

    assert (
        client.get(
            f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote('https://h5.example.com/')}"
        ).status_code
        == 200
    )
    dump = store_dump(real_redis)
    assert "dingnew01" in dump
    rt = get_runtime(redis_app)
    ticket = rt.channel_client(rt.corp(DEMO_CORPID)).ticket.peek()
    assert ticket is not None
    for secret in (
        "CorpSecretValue123",
        "ChannelSecretValue456",
        "CallbackTokenValue789",
        AES_KEY,
        DEMO_CORP_SECRET,
        DEMO_CHANNEL_SECRET,
        ticket.value,
    ):
        assert secret not in dump


def test_registration_changes_reach_other_processes_within_the_cache_ttl(app: Any) -> None:
    import time
    from dataclasses import replace as dc_replace

    from corp.registry import CorpRegistry

    rt = get_runtime(app)
    here = CorpRegistry(rt.store, rt.sealer, cache_ttl=0.3)
    elsewhere = CorpRegistry(rt.store, rt.sealer, cache_ttl=0.3)  # another worker or host
    assert here.get(DEMO_CORPID).agent_id == DEMO_AGENT_ID
    elsewhere.add(dc_replace(elsewhere.get(DEMO_CORPID), agent_id="777"))
    assert elsewhere.get(DEMO_CORPID).agent_id == "777"  # the writer sees its change at once
    assert here.get(DEMO_CORPID).agent_id == DEMO_AGENT_ID  # others within the TTL
    time.sleep(0.35)
    assert here.get(DEMO_CORPID).agent_id == "777"
    elsewhere.remove(DEMO_CORPID)
    time.sleep(0.35)
    with pytest.raises(Exception, match="not registered"):
        here.get(DEMO_CORPID)


def test_add_refuses_the_in_process_store(sim_server: Any) -> None:
    from app import create_app
    from tests.conftest import make_config

    app = create_app(make_config(sim_server, TESTING=False))
    result = app.test_cli_runner().invoke(args=GOOD)
    assert result.exit_code != 0 and "REDIS_URL is not set" in result.output
    assert not get_runtime(app).registry.corpids()
