"""`flask corp …`: register, list, remove and self-test corps. Secrets are sealed; nothing prints them.
`flask events stream`: receive events over DingTalk's Stream mode (corp/stream.py)."""

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
from corp.check_apps import check_app
from corp.events import EventLog
from corp.registry import CHANNEL, INTERNAL, KINDS, MAP_BY, REPLACED, Corp
from corp.runtime import Runtime
from corp.schemas import CorpRegistrationSchema, first_error, parse_origin
from kit.errors import Failure
from oapi.credentials import CHANNEL_TOKEN
from oapi.signing import HASHES
from web.runtime import get_runtime

bp = Blueprint("corp", __name__, cli_group="corp")
events_bp = Blueprint("events", __name__, cli_group="events")


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
@click.option(
    "--kind",
    type=click.Choice(list(KINDS)),
    default=CHANNEL,
    show_default=True,
    help="channel: the legacy service window; service-window: the current window's app in its virtual org "
    "(CORPID = the virtual org's corpId); internal: an employee micro-app of a real org.",
)
@click.option("--corp-secret", help="Kind channel: the app's corpSecret (for the corp token).")
@click.option("--channel-secret", help="Kind channel: the service window's channelSecret (for the channel token).")
@click.option("--app-key", help="Kinds service-window and internal: the app's AppKey (Client ID).")
@click.option("--app-secret", help="Kinds service-window and internal: the app's AppSecret (Client Secret).")
@click.option("--agent-id", help="The app's AgentId (the page's dd.config agentId).")
@click.option("--origin", "origins", multiple=True, help="scheme://host[:port] of the H5 pages (repeatable).")
@click.option(
    "--map-via",
    help="Kind service-window: the real org (a corp registered with --kind internal) whose userids followers map to.",
)
@click.option(
    "--map-by",
    type=click.Choice(list(MAP_BY)),
    help="With --map-via: which of the follower's ids the real org looks up (default unionid).",
)
@click.option("--require-follow", is_flag=True, help="Kind service-window: refuse people who do not follow the window.")
@click.option(
    "--sign-hash",
    type=click.Choice(list(HASHES)),
    default=None,
    help="Hash of the dd.config signature (default: sha1 for kind channel, sha256 for the others).",
)
@click.option("--callback-token", help="The callback token (push receiver).")
@click.option("--aes-key", help="The callback EncodingAESKey (43 characters).")
@click.option("--callback-key", help="Receiver key of pushes: corpId (default), appKey, suiteKey or customKey.")
@click.option("--landing-url", help="Where the page sends a signed-in person (token in the #fragment).")
def add(corpid: str, origins: tuple[str, ...], **options: Any) -> None:
    """Register a corp's login app, or replace its registration. Secrets are stored sealed.

    Replacing drops everything cached for the corp (tokens, tickets, user links, backoff and cooldowns); a refresh
    in flight for the old registration stores nothing.
    """
    require_shared_store()
    raw = {"corpid": corpid, "origins": list(origins), **{k: v for k, v in options.items() if v not in (None, "")}}
    raw["require_follow"] = bool(options["require_follow"])
    if not options["agent_id"]:
        fail("--agent-id is required")
    if not origins:
        fail("at least one --origin is required (scheme://host[:port] of the pages to sign)")
    try:
        data = CorpRegistrationSchema().load(raw)
    except ValidationError as e:
        fail(first_error(e, flags=True))
        return
    if bool(data["callback_token"]) != bool(data["aes_key"]):
        fail("--callback-token and --aes-key go together")
    if data["callback_key"] and not data["callback_token"]:
        fail("--callback-key needs --callback-token and --aes-key")
    corp = Corp(
        corpid=data["corpid"],
        kind=data["kind"],
        agent_id=data["agent_id"],
        origins=tuple(dict.fromkeys(parse_origin(o) for o in data["origins"])),
        sign_hash=data["sign_hash"],
        landing_url=data["landing_url"],
        callback_key=data["callback_key"],
        app_key=data["app_key"] or "",
        map_via=data["map_via"],
        map_by=data["map_by"],
        require_follow=data["require_follow"],
        corp_secret=data["corp_secret"] or "",
        channel_secret=data["channel_secret"] or "",
        app_secret=data["app_secret"] or "",
        callback_token=data["callback_token"],
        aes_key=data["aes_key"],
    )
    registry = get_runtime().registry
    warning = None
    if corp.map_via:
        try:
            via = registry.get(corp.map_via)
        except Failure:
            warning = f"{corp.map_via} is not registered yet: register it with --kind internal before followers sign in"
        else:
            if via.kind != INTERNAL:
                fail(
                    f"--map-via {corp.map_via} is registered as kind {via.kind}; it must be the real org's internal app"
                )
    outcome = registry.add(corp, renew=True)
    what = f"corp {corp.corpid} (kind {corp.kind}, agent {corp.agent_id}, origins {', '.join(corp.origins)})"
    if outcome == REPLACED:
        click.echo(
            f"Replaced {what}. The previous registration and everything cached for it (tokens, tickets, user "
            "links, backoff) are dropped."
        )
    else:
        click.echo(f"Registered {what}.")
    if warning:
        click.echo(f"Warning: {warning}.", err=True)


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
        extra = f"  app_key={c['app_key']}" if c["app_key"] else ""
        if c["map_via"]:
            extra += f"  map_via={c['map_via']} by {c['map_by']}"
        if c["require_follow"]:
            extra += "  require_follow"
        click.echo(
            f"{c['corpid']}  kind={c['kind']}  agent={c['agent_id']}  hash={c['sign_hash']}  {callback}"
            f"  origins={','.join(c['origins'])}{extra}"  # type: ignore[arg-type]
        )


@bp.cli.command("remove")
@click.argument("corpid")
def remove(corpid: str) -> None:
    """Forget a corp and everything cached for it (its OpenID Connect clients stay registered, and are named)."""
    rt = get_runtime()
    if not rt.registry.remove(corpid):
        fail(f"corp {corpid} is not registered")
    click.echo(f"Removed corp {corpid}.")
    # Clients are the relying parties' configuration, not the corp's cache: kept, but their sign-ins now fail, so
    # the person removing the corp is told which ones to remove (or to register the corp again).
    orphans = sorted(c.client_id for c in rt.clients.all() if c.corpid == corpid)
    if orphans:
        click.echo(
            f"Note: OpenID Connect clients still name {corpid}: {', '.join(orphans)}. Their sign-ins fail until the "
            "corp is registered again; remove them with `flask client remove CLIENT_ID`.",
            err=True,
        )


@bp.cli.command("check")
@click.argument("corpid")
@click.option("--verbose", is_flag=True, help="Also print the gateway's own log lines (on stderr).")
def check(corpid: str, verbose: bool) -> None:
    """Live self-test of the corp's kind, with hints for what to fix.

    Kind channel: both tokens, the channel ticket and the agent id. Kinds internal and service-window: the app
    token and ticket, then the usual mistakes (an appKey registered twice, an app of the wrong org, --map-via and
    its permission to look people up by unionid) and the agent id in a type-0 dd.config signed with the app's ticket.

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
        results = check_app(rt, corp) if corp.current else _check_channel(rt, corp)
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


def _check_channel(rt: Runtime, corp: Corp) -> list[CheckResult]:
    """Kind channel: both tokens, then the channel ticket and the agent id, which need the channel token."""
    results = check_corp(rt.upstream, corp)
    if all(r.ok for r in results if r.pipeline == CHANNEL_TOKEN.app):
        return results + check_page_config(rt, corp)
    skipped = "Not checked, nor the agent id: both need the channel token."
    return [*results, CheckResult("ticket", False, None, skipped, skipped=True)]


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


@events_bp.cli.command("stream")
@click.argument("corpids", nargs=-1)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve this process's Prometheus metrics (events, acks, reconnects) on 127.0.0.1:PORT.",
)
def stream(corpids: tuple[str, ...], metrics_port: int | None) -> None:
    """Receive DingTalk events over Stream mode: one connection per app, each event acknowledged only once it is
    recorded in the corp's event log (the same one as HTTP pushes, `flask corp events CORPID`).

    Connects the named corps (kinds service-window and internal), or with no CORPID every registered one, and
    follows the registry (GATEWAY_STREAM_RESCAN). Reconnects on its own (GATEWAY_STREAM_BACKOFF_MIN … _MAX seconds)
    and stops cleanly on SIGTERM or Ctrl-C. Each connection's state is shown by /healthz.
    """
    # Imported here: the SDK (and the aiohttp it pulls in) costs every web worker a quarter of a second otherwise.
    from corp.stream import StreamRunner, run_stream, stream_corps

    rt = get_runtime()
    if not rt.settings.redis_url and not current_app.config.get("TESTING"):
        fail("REDIS_URL is not set: the events must go to the shared store the web side reads")
    try:
        if corpids:  # a named corp that cannot be served is said before any connection or event loop starts
            stream_corps(rt, corpids, strict=True)
        runner = StreamRunner(rt, corpids)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            start_http_server(metrics_port, addr="127.0.0.1")
        run_stream(runner)
    except Failure as e:
        fail(e.message)
