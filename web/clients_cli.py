"""`flask client …`: register, list and remove the OpenID Connect provider's relying parties. A confidential
client's secret is printed once, when it is made; the store keeps only its hash, and nothing prints it again."""

from __future__ import annotations

import json

import click
from flask import Blueprint

from identity.clients import CLIENT_ID_RE, CLIENT_ID_SHAPE, Client, hash_secret, new_secret, redirect_uri_problem
from kit.errors import Failure
from web.cli import fail, require_shared_store
from web.runtime import get_runtime

bp = Blueprint("clients", __name__, cli_group="client")


@bp.cli.command("add")
@click.argument("client_id")
@click.option("--corp", "corpid", required=True, help="The registered corp whose people sign in to this client.")
@click.option(
    "--redirect-uri",
    "redirect_uris",
    multiple=True,
    required=True,
    help="Where the client receives the code (repeatable); matched exactly, character for character.",
)
@click.option("--public", is_flag=True, help="A client that cannot keep a secret (SPA, native app): PKCE S256 only.")
def add(client_id: str, corpid: str, redirect_uris: tuple[str, ...], public: bool) -> None:
    """Register a relying party, or replace its registration (and secret).

    A confidential client's secret is printed once, as `client_secret: SECRET` on a line of its own; only its hash
    is stored. Replacing a client makes a new secret: the old one stops working at once.
    """
    require_shared_store()
    if not CLIENT_ID_RE.match(client_id):
        fail(f"client id must be {CLIENT_ID_SHAPE}")
    rt = get_runtime()
    try:
        rt.corp(corpid)
    except Failure:
        fail(f"corp {corpid} is not registered: register it first with `flask corp add {corpid} …`")
    for uri in redirect_uris:
        problem = redirect_uri_problem(uri)
        if problem:
            fail(f"--redirect-uri {uri!r} {problem}")
    secret = None if public else new_secret()
    client = Client(
        client_id=client_id,
        corpid=corpid,
        redirect_uris=tuple(dict.fromkeys(redirect_uris)),
        public=public,
        secret_hash=hash_secret(secret) if secret else None,
    )
    replaced = rt.clients.add(client)
    what = f"{'public' if public else 'confidential'} client {client_id} (corp {corpid}, redirect URIs "
    what += ", ".join(client.redirect_uris) + ")"
    click.echo(f"{'Replaced' if replaced else 'Registered'} {what}.")
    if secret:
        click.echo(f"client_secret: {secret}")
        click.echo("Keep it now: the gateway stores only its hash and cannot show it again.", err=True)


@bp.cli.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_clients(as_json: bool) -> None:
    """List the registered clients (never a secret)."""
    clients = [c.public_view() for c in get_runtime().clients.all()]
    if as_json:
        click.echo(json.dumps(clients, ensure_ascii=False, indent=2))
        return
    if not clients:
        click.echo("No clients registered. Add one with `flask client add CLIENT_ID --corp CORPID --redirect-uri …`.")
    for c in clients:
        click.echo(f"{c['client_id']}  {c['type']}  corp={c['corpid']}  redirect_uris={' '.join(c['redirect_uris'])}")


@bp.cli.command("remove")
@click.argument("client_id")
def remove(client_id: str) -> None:
    """Forget a client; its codes and access tokens stop working at once."""
    if not get_runtime().clients.remove(client_id):
        fail(f"client {client_id} is not registered")
    click.echo(f"Removed client {client_id}.")
