"""The public signing keys (`GET /.well-known/jwks.json`) and `flask keys rotate`."""

from __future__ import annotations

import click
from flask import Blueprint, Response, jsonify

from web.runtime import get_runtime

bp = Blueprint("keys", __name__, cli_group="keys")

# Verifiers cache the JWKS; a rotation publishes the new key before it signs anything (in another worker, within
# the ring's 5 s re-read), and the old one stays published for a token lifetime, so a few minutes of caching is safe.
JWKS_MAX_AGE = 300


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    response = jsonify(get_runtime().keys.jwks())
    response.headers["Cache-Control"] = f"public, max-age={JWKS_MAX_AGE}"
    # Public keys, read by relying parties' browser code too (a public client verifying its ID token).
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.cli.command("rotate")
def rotate() -> None:
    """Make a new signing key; every worker signs with it within 10 s.

    The previous key stays in the JWKS until every token it signed has expired (GATEWAY_SESSION_TTL), so tokens
    issued before the rotation keep verifying.
    """
    new, previous = get_runtime().keys.rotate()
    click.echo(f"New signing key {new}." + (f" The previous key {previous} stays published." if previous else ""))


@bp.cli.command("list")
def list_keys() -> None:
    """List the published signing keys (key ids only; private keys never leave the store)."""
    for key in get_runtime().keys.published():
        state = "current" if key.current else f"retired, published until {key.published_until:.0f}"
        click.echo(f"{key.kid}  {state}")
