"""`flask corp …`: register, list, remove and self-test corps. Secrets are sealed; nothing prints them."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from flask import Blueprint, current_app
from marshmallow import ValidationError

from corp.check import TOKEN_PIPELINES, CheckResult, check_corp, check_page_config
from corp.events import EventLog
from corp.registry import REPLACED, Corp
from corp.schemas import CorpRegistrationSchema, first_error, parse_origin
from kit.errors import Failure
from oapi.credentials import CHANNEL_TOKEN
from oapi.signing import DEFAULT_HASH, HASHES
from web.runtime import get_runtime

bp = Blueprint("corp", __name__, cli_group="corp")


def fail(message: str) -> None:
    """Print one line to stderr and exit non-zero."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)


def require_shared_store() -> None:
    """Refuse to write to the in-process store: the registration would vanish when the command exits."""
    if not get_runtime().settings.redis_url and not current_app.config.get("TESTING"):
        fail("REDIS_URL is not set: a corp registered now would vanish with this process; set REDIS_URL")


@bp.cli.command("add")
@click.argument("corpid")
@click.option("--corp-secret", help="The app's corpSecret (for the corp token).")
@click.option("--channel-secret", help="The service window's channelSecret (for the channel token).")
@click.option("--agent-id", help="The agentid the page passes to dd.config.")
@click.option("--origin", "origins", multiple=True, help="scheme://host[:port] of the H5 pages (repeatable).")
@click.option(
    "--sign-hash",
    type=click.Choice(list(HASHES)),
    default=DEFAULT_HASH,
    show_default=True,
    help="Hash of the dd.config signature.",
)
@click.option("--callback-token", help="The callback token (push receiver).")
@click.option("--aes-key", help="The callback EncodingAESKey (43 characters).")
@click.option("--callback-key", help="Receiver key of pushes: corpId (default), appKey, suiteKey or customKey.")
@click.option("--landing-url", help="Where the page sends a signed-in follower (token in the #fragment).")
def add(
    corpid: str,
    corp_secret: str | None,
    channel_secret: str | None,
    agent_id: str | None,
    origins: tuple[str, ...],
    sign_hash: str,
    callback_token: str | None,
    aes_key: str | None,
    callback_key: str | None,
    landing_url: str | None,
) -> None:
    """Register a corp, or replace its registration. Secrets are stored sealed.

    Replacing drops everything cached for the corp (tokens, tickets, user links, backoff and cooldowns); a refresh
    in flight for the old registration stores nothing.
    """
    require_shared_store()
    raw = {
        "corpid": corpid,
        "corp_secret": corp_secret,
        "channel_secret": channel_secret,
        "agent_id": agent_id,
        "origins": list(origins),
        "sign_hash": sign_hash,
        "callback_token": callback_token,
        "aes_key": aes_key,
        "callback_key": callback_key,
        "landing_url": landing_url,
    }
    for name in ("corp_secret", "channel_secret", "agent_id"):
        if not raw[name]:
            fail(f"--{name.replace('_', '-')} is required")
    if not origins:
        fail("at least one --origin is required (scheme://host[:port] of the pages to sign)")
    try:
        data = CorpRegistrationSchema().load(raw)
    except ValidationError as e:
        fail(first_error(e))
        return
    if bool(data["callback_token"]) != bool(data["aes_key"]):
        fail("--callback-token and --aes-key go together")
    if data["callback_key"] and not data["callback_token"]:
        fail("--callback-key needs --callback-token and --aes-key")
    corp = Corp(
        corpid=data["corpid"],
        agent_id=data["agent_id"],
        origins=tuple(dict.fromkeys(parse_origin(o) for o in data["origins"])),
        sign_hash=data["sign_hash"],
        landing_url=data["landing_url"],
        callback_key=data["callback_key"],
        corp_secret=data["corp_secret"],
        channel_secret=data["channel_secret"],
        callback_token=data["callback_token"],
        aes_key=data["aes_key"],
    )
    outcome = get_runtime().registry.add(corp, renew=True)
    what = f"corp {corp.corpid} (agent {corp.agent_id}, origins {', '.join(corp.origins)})"
    if outcome == REPLACED:
        click.echo(
            f"Replaced {what}. The previous registration and everything cached for it (tokens, tickets, user "
            "links, backoff) are dropped."
        )
    else:
        click.echo(f"Registered {what}.")


@bp.cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_corps(as_json: bool) -> None:
    """List registered corps (never prints secrets)."""
    rt = get_runtime()
    corps: list[dict[str, Any]] = [rt.registry.get(c).public() for c in rt.registry.corpids()]
    if as_json:
        click.echo(json.dumps(corps, ensure_ascii=False, indent=2))
        return
    if not corps:
        click.echo("No corps registered. Add one with `flask corp add CORPID …`.")
    for c in corps:
        callback = "callback on" if c["callback"] else "no callback"
        click.echo(
            f"{c['corpid']}  agent={c['agent_id']}  hash={c['sign_hash']}  {callback}  origins={','.join(c['origins'])}"
        )  # type: ignore[arg-type]


@bp.cli.command("remove")
@click.argument("corpid")
def remove(corpid: str) -> None:
    """Forget a corp and everything cached for it."""
    if not get_runtime().registry.remove(corpid):
        fail(f"corp {corpid} is not registered")
    click.echo(f"Removed corp {corpid}.")


@bp.cli.command("check")
@click.argument("corpid")
@click.option("--verbose", is_flag=True, help="Also print the gateway's own log lines (on stderr).")
def check(corpid: str, verbose: bool) -> None:
    """Live self-test: both tokens, the channel ticket and the agent id, with hints for what to fix.

    Exits 1 when anything failed. Unless --verbose, the gateway's log lines stay out of the report: every
    failure they would mention is in it.
    """
    rt = get_runtime()
    with logs_muted(not verbose):
        try:
            corp = rt.registry.get(corpid)
        except Failure as e:
            fail(e.message)
            return
        results = check_corp(rt.upstream, corp)
        if all(r.ok for r in results if r.pipeline == CHANNEL_TOKEN.app):
            results += check_page_config(rt, corp)
        else:
            skipped = "Not checked, nor the agent id: both need the channel token."
            results.append(CheckResult("ticket", False, None, skipped, skipped=True))
    for r in results:
        mark = "skip" if r.skipped else "ok  " if r.ok else "FAIL"
        if r.ok:
            detail = f"token fp={r.fingerprint}" if r.pipeline in TOKEN_PIPELINES else r.diagnosis
        elif r.skipped or r.errcode is None:
            detail = r.diagnosis
        else:
            detail = f"errcode={r.errcode}: {r.diagnosis}"
        click.echo(f"{mark} {r.pipeline:<7} {detail}")
    if any(not r.ok and not r.skipped for r in results):
        sys.exit(1)


@contextmanager
def logs_muted(muted: bool) -> Iterator[None]:
    """Keep log records (up to ERROR) from being emitted while the block runs, so they cannot interleave with a
    report on the terminal."""
    if not muted:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


@bp.cli.command("events")
@click.argument("corpid")
@click.option("-n", "--count", default=20, show_default=True, help="How many recent events to print.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing events as they arrive (Ctrl-C stops).")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="With --follow: stop after this many seconds without a new event (default: never).",
)
def events(corpid: str, count: int, follow: bool, idle_timeout: float | None) -> None:
    """Print a corp's recent DingTalk events (time, type, ids; never payloads or secrets)."""
    rt = get_runtime()
    try:
        rt.registry.get(corpid)
    except Failure as e:
        fail(e.message)
        return
    log = EventLog(rt.store, corpid)
    recent = log.recent(count)
    if not recent and not follow:
        click.echo(f"No events recorded for {corpid}.")
    for event in recent:
        click.echo(event.describe())
    if not follow:
        return
    try:
        for event in log.follow(recent[-1].id if recent else "$", idle_timeout=idle_timeout):
            click.echo(event.describe())
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
