"""Where the web layer finds the runtime app.py composed (corp/runtime.py): one Flask extension slot."""

from __future__ import annotations

from flask import Flask, current_app, request

from corp.runtime import Runtime

EXTENSION = "dtgw.runtime"


def get_runtime(app: Flask | None = None) -> Runtime:
    return (app or current_app).extensions[EXTENSION]


def issuer() -> str:
    """`iss` of the tokens signed for this request: GATEWAY_ISSUER, else the base URL the request came in on
    (sandbox mode; behind nginx, ProxyFix makes it the public one)."""
    configured = get_runtime().settings.issuer
    return configured or request.url_root.rstrip("/")
