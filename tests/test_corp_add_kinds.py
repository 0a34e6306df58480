"""`flask corp add --kind …` and `flask corp list` for the three kinds of login app (gateway-contract.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox.demo import (
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from tests.helpers import ORIGIN, corp_add_args, store_dump
from web.runtime import get_runtime

INTERNAL = [
    "corp", "add", DEMO_ORG_CORPID, "--kind", "internal", "--app-key", DEMO_APP_KEY, "--app-secret", DEMO_APP_SECRET,
    "--agent-id", DEMO_APP_AGENT_ID, "--origin", ORIGIN,
]  # fmt: skip
WINDOW = [
    "corp", "add", DEMO_WINDOW_CORPID, "--kind", "service-window", "--app-key", DEMO_WINDOW_APP_KEY,
    "--app-secret", DEMO_WINDOW_APP_SECRET, "--agent-id", DEMO_WINDOW_AGENT_ID, "--origin", ORIGIN,
]  # fmt: skip


def run(runner: Any, args: list[str]) -> Any:
    return runner.invoke(args=args, catch_exceptions=False)


def test_each_kind_registers_with_its_own_credentials(app: Any, runner: Any) -> None:
    assert run(runner, INTERNAL).exit_code == 0
    result = run(runner, [*WINDOW, "--map-via", DEMO_ORG_CORPID, "--map-by", "associated_unionid", "--require-follow"])
    assert result.exit_code == 0, result.output
    assert "kind service-window" in result.output
    registry = get_runtime(app).registry
    internal, window = registry.get(DEMO_ORG_CORPID), registry.get(DEMO_WINDOW_CORPID)
    assert (internal.kind, internal.app_key, internal.app_secret, internal.sign_hash) == (
        "internal",
        DEMO_APP_KEY,
        DEMO_APP_SECRET,
        "sha256",  # the default of the current kinds
    )
    assert (window.kind, window.map_via, window.map_by, window.require_follow) == (
        "service-window",
        DEMO_ORG_CORPID,
        "associated_unionid",
        True,
    )
    # The legacy kind stays the default, with its own default hash.
    assert run(runner, corp_add_args()).exit_code == 0
    legacy = registry.get(corp_add_args()[2])
    assert (legacy.kind, legacy.sign_hash) == ("channel", "sha1")


def test_list_shows_kind_and_mapping_but_never_secrets(app: Any, runner: Any) -> None:
    run(runner, INTERNAL)
    run(runner, [*WINDOW, "--map-via", DEMO_ORG_CORPID, "--require-follow"])
    text = run(runner, ["corp", "list"]).output
    assert "kind=internal" in text and "kind=service-window" in text
    assert f"map_via={DEMO_ORG_CORPID} by unionid" in text and "require_follow" in text
    listed = json.loads(run(runner, ["corp", "list", "--json"]).output)
    window = next(c for c in listed if c["corpid"] == DEMO_WINDOW_CORPID)
    assert window["kind"] == "service-window" and window["app_key"] == DEMO_WINDOW_APP_KEY
    for secret in (DEMO_APP_SECRET, DEMO_WINDOW_APP_SECRET):
        assert secret not in text and secret not in json.dumps(listed)


def test_app_secrets_are_stored_sealed(app: Any, runner: Any) -> None:
    run(runner, INTERNAL)
    raw = get_runtime(app).store.hgetall(get_runtime(app).registry.key(DEMO_ORG_CORPID))
    assert DEMO_APP_SECRET not in json.dumps(raw)
    assert raw["app_secret"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (INTERNAL[:7] + INTERNAL[9:], "--app-secret is required for kind internal"),
        ([*INTERNAL, "--corp-secret", "x"], "--corp-secret does not apply to kind internal"),
        ([*corp_add_args(), "--app-key", "k"], "--app-key does not apply to kind channel"),
        ([*INTERNAL, "--require-follow"], "--require-follow applies to kind service-window only"),
        ([*INTERNAL, "--map-via", DEMO_WINDOW_CORPID], "--map-via applies to kind service-window only"),
        ([*WINDOW, "--map-by", "unionid"], "--map-by needs --map-via"),
        ([*WINDOW, "--map-via", DEMO_WINDOW_CORPID], "not the service window's own virtual org"),
        ([*WINDOW[:6], "bad key!", *WINDOW[7:]], "app key must be the AppKey"),
    ],
)
def test_a_mixed_up_registration_is_refused_and_writes_nothing(
    app: Any, runner: Any, args: list[str], message: str
) -> None:
    store = get_runtime(app).store
    before = store_dump(store)
    result = run(runner, args)
    assert result.exit_code != 0
    assert message in result.output
    assert store_dump(store) == before


def test_map_via_must_name_an_internal_app_when_registered(app: Any, runner: Any) -> None:
    run(runner, corp_add_args(DEMO_ORG_CORPID))  # the real org registered as a legacy window
    result = run(runner, [*WINDOW, "--map-via", DEMO_ORG_CORPID])
    assert result.exit_code != 0
    assert "kind channel" in result.output and "internal app" in result.output
    assert not get_runtime(app).registry.exists(DEMO_WINDOW_CORPID)


def test_map_via_not_yet_registered_warns(app: Any, runner: Any) -> None:
    result = run(runner, [*WINDOW, "--map-via", DEMO_ORG_CORPID])
    assert result.exit_code == 0
    assert "is not registered yet" in result.output
    assert get_runtime(app).registry.get(DEMO_WINDOW_CORPID).map_via == DEMO_ORG_CORPID
