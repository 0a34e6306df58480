"""`flask corp add | list | remove | check`: validation, sealing, and the self-test's diagnoses."""

from __future__ import annotations

from typing import Any

import jwt
import pytest

from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from tests.helpers import corp_add_args, store_dump
from web.runtime import get_runtime

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
        (replace(GOOD, "--agent-id", "-5"), "agent id must be a positive whole number"),
        (replace(GOOD, "--agent-id", "0"), "agent id must be a positive whole number"),
        (replace(GOOD, "--agent-id", "+42"), "agent id must be a positive whole number"),
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
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [
        ["ok", "corp"],
        ["ok", "channel"],
        ["ok", "ticket"],
        ["ok", "agent"],
    ], result.output
    assert "fetched now" in lines[2] and DEMO_AGENT_ID in lines[3]
    again = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert "cached, fetched" in again.output.splitlines()[2]  # the ticket pages are signed with, not a new one


def register(
    runner: Any,
    corpid: str = DEMO_CORPID,
    corp_secret: str = DEMO_CORP_SECRET,
    channel_secret: str = DEMO_CHANNEL_SECRET,
) -> None:
    args = corp_add_args(corpid, corp_secret=corp_secret, channel_secret=channel_secret, origin="https://a.example")
    assert runner.invoke(args=args).exit_code == 0


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
    # The signing key (made on first use, here by the JWKS) is sealed too: neither its PEM nor its private scalar.
    assert client.get("/.well-known/jwks.json").status_code == 200
    private = rt.keys.signing_key().private_key
    scalar = jwt.algorithms.ECAlgorithm.to_jwk(private, as_dict=True)["d"]
    dump = store_dump(real_redis)
    assert "PRIVATE KEY" not in dump and scalar not in dump
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
    here = CorpRegistry(rt.store, rt.sealer, cache_ttl=0.5)
    elsewhere = CorpRegistry(rt.store, rt.sealer, cache_ttl=0.5)  # another worker or host
    read_at = time.monotonic()
    assert here.get(DEMO_CORPID).agent_id == DEMO_AGENT_ID
    elsewhere.add(dc_replace(elsewhere.get(DEMO_CORPID), agent_id="777"))
    assert elsewhere.get(DEMO_CORPID).agent_id == "777"  # the writer sees its change at once
    seen = here.get(DEMO_CORPID).agent_id
    if time.monotonic() - read_at < 0.5:  # a loaded machine may already be past the TTL here
        assert seen == DEMO_AGENT_ID  # others keep their copy within the TTL
    time.sleep(0.55)
    assert here.get(DEMO_CORPID).agent_id == "777"  # and see the change once it is over
    elsewhere.remove(DEMO_CORPID)
    time.sleep(0.55)
    with pytest.raises(Exception, match="not registered"):
        here.get(DEMO_CORPID)


def test_add_refuses_the_in_process_store(sim_server: Any) -> None:
    from app import create_app
    from tests.helpers import make_config

    app = create_app(make_config(sim_server, TESTING=False))
    result = app.test_cli_runner().invoke(args=GOOD)
    assert result.exit_code != 0 and "REDIS_URL is not set" in result.output
    assert not get_runtime(app).registry.corpids()


def keys_of(app: Any, corpid: str = DEMO_CORPID) -> list[str]:
    return sorted(get_runtime(app).store.scan_iter(match=f"dtgw:v1:{{{corpid}}}:*"))


def fill_caches(app: Any, sim: Any) -> None:
    """Tokens, ticket, a user link, a backoff window, a forced-refresh cooldown and a remembered failure."""
    from urllib.parse import quote

    from tests.helpers import EMPLOYEE, ORIGIN

    client = app.test_client()
    page = quote(ORIGIN + "/", safe="")
    assert client.get(f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={page}").status_code == 200
    code = sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
    assert client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code}).status_code == 200
    report = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": ORIGIN + "/", "errorCode": 52013}
    assert client.post("/channel/config/error", json=report).status_code == 202
    rt = get_runtime(app)
    rt.upstream.backoff.trip(DEMO_CORPID, "user/getUseridByUnionid")


def test_readding_a_corp_says_replaced_and_drops_its_cache(app: Any, runner: Any, sim: Any) -> None:
    fill_caches(app, sim)
    before = keys_of(app)
    kinds = {k.split("}:", 1)[1].split(":")[0] for k in before}
    assert {"channel", "corp", "link", "link-by-user", "backoff", "backoff-level", "trace"} <= kinds, before
    registration = get_runtime(app).registry.get(DEMO_CORPID).registration
    tickets = sim.calls("channel/get_channel_jsapi_ticket")

    result = runner.invoke(args=corp_add_args())
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Replaced corp {DEMO_CORPID}") and "Registered" not in result.output
    assert "dropped" in result.output
    # Only the registration and the support trace (history, not cache) are left.
    left = keys_of(app)
    assert left == [f"dtgw:v1:{{{DEMO_CORPID}}}:corp"] + [k for k in before if ":trace:" in k], left
    assert get_runtime(app).registry.get(DEMO_CORPID).registration != registration
    # The next page view fetches a ticket for the new registration instead of reusing the old one.
    from tests.helpers import ORIGIN

    query = f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={ORIGIN}/"
    assert app.test_client().get(f"/channel/config?{query}").status_code == 200
    assert sim.calls("channel/get_channel_jsapi_ticket") == tickets + 1


def test_a_first_add_says_registered(runner: Any) -> None:
    result = runner.invoke(args=swap(corp_add_args(), DEMO_CORPID, "dingfresh"))
    assert result.exit_code == 0 and result.output.startswith("Registered corp dingfresh"), result.output


def test_an_identical_registration_from_code_keeps_the_cache(app: Any, sim: Any) -> None:
    """Sandbox mode registers the demo corp in every worker it starts: that must not drop the workers' tickets."""
    from corp.registry import UNCHANGED

    fill_caches(app, sim)
    registry = get_runtime(app).registry
    before = keys_of(app)
    corp = registry.get(DEMO_CORPID)
    assert registry.add(corp) == UNCHANGED
    assert keys_of(app) == before and registry.get(DEMO_CORPID).registration == corp.registration


def test_remove_leaves_nothing_of_the_corp(app: Any, runner: Any, sim: Any) -> None:
    fill_caches(app, sim)
    result = runner.invoke(args=["corp", "remove", DEMO_CORPID])
    assert result.exit_code == 0 and "Removed" in result.output
    assert keys_of(app) == []


def test_check_names_a_wrong_agent_id(app: Any, runner: Any) -> None:
    register(runner)  # the right secrets...
    result = runner.invoke(args=corp_add_args(agent_id="42"))  # ...with the wrong agent id
    assert result.exit_code == 0, result.output
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines][:3] == [["ok", "corp"], ["ok", "channel"], ["ok", "ticket"]]
    assert lines[3].startswith("FAIL agent") and "errcode=52019" in lines[3], result.output
    assert "agent id 42" in lines[3] and "--agent-id" in lines[3]


def test_check_reports_a_ticket_failure_with_its_hint(runner: Any, sim: Any) -> None:
    sim.inject("channel/get_channel_jsapi_ticket", 60011, times=5, corpid=DEMO_CORPID)
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert lines[2].startswith("FAIL ticket") and "errcode=60011" in lines[2] and "permission" in lines[2]
    assert lines[3].startswith("skip agent"), result.output


def test_check_without_a_channel_token_skips_the_ticket(runner: Any) -> None:
    register(runner, channel_secret="not-the-channel-secret")
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 1
    assert [line.split()[:2] for line in result.output.splitlines()] == [
        ["ok", "corp"],
        ["FAIL", "channel"],
        ["skip", "ticket"],
    ], result.output


def test_check_against_dingtalk_itself_reads_the_pages_reports(
    app: Any, runner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DingTalk has no server-side judge of a dd.config: there, the agent id shows in what pages report."""
    import corp.check
    from tests.helpers import ORIGIN

    monkeypatch.setattr(corp.check, "_DINGTALK_HOSTS", frozenset({"127.0.0.1"}))  # the simulator plays DingTalk
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[3].startswith("skip agent") and "no page has reported 52019" in result.output
    report = {"corpid": DEMO_CORPID, "agentid": DEMO_AGENT_ID, "url": ORIGIN + "/", "errorCode": 52019}
    assert app.test_client().post("/channel/config/error", json=report).status_code == 202
    result = runner.invoke(args=["corp", "check", DEMO_CORPID])
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[3].startswith("FAIL agent") and "1 page(s) reported 52019" in result.output


@pytest.mark.redis
def test_check_prints_no_log_lines(sim_server: Any, redis_url: str, real_redis: Any) -> None:
    """`flask corp check` as typed in a terminal: its report only, although the failures it finds are logged."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import TEST_SECRET_KEY

    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DINGTALK_API_BASE": sim_server.base_url,
        "GATEWAY_SECRET_KEY": TEST_SECRET_KEY,
    }
    flask = [sys.executable, "-m", "flask", "--app", "app", "corp"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*flask, *args], cwd=root, env=env, capture_output=True, text=True, timeout=60)

    added = run(*corp_add_args(corp_secret="not-the-corp-secret")[1:])
    assert added.returncode == 0, added.stderr
    checked = run("check", DEMO_CORPID)
    assert checked.returncode == 1
    assert checked.stderr == "", checked.stderr
    assert [line.split()[:2] for line in checked.stdout.splitlines()] == [
        ["FAIL", "corp"],
        ["ok", "channel"],
        ["ok", "ticket"],
        ["ok", "agent"],
    ], checked.stdout
    verbose = run("check", DEMO_CORPID, "--verbose")
    assert "WARNING" in verbose.stderr and "WARNING" not in verbose.stdout  # what the default keeps out
