"""The gateway's application factory. Nothing happens at import time; `create_app()` does it all."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import redis
from flask import Flask, Response, jsonify
from werkzeug.middleware.proxy_fix import ProxyFix

from corp.runtime import build_runtime
from corp.stream_state import StreamStates
from gateway import logs, store
from gateway.config import DEFAULTS, Settings, load_config
from web import cors, errors, metrics, oidc
from web.callbacks import bp as callbacks_bp
from web.channel import bp as channel_bp
from web.cli import bp as corp_bp
from web.cli import events_bp
from web.clients_cli import bp as clients_bp
from web.jsonio import StrictJSONProvider
from web.keys import bp as keys_bp
from web.runtime import EXTENSION, get_runtime

log = logging.getLogger("gateway")


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway from the environment (and `overrides`, for tests)."""
    config = load_config(overrides=overrides)
    settings = Settings.from_config(config)
    logs.configure_logging()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.json = StrictJSONProvider(app)
    app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body
    if settings.trust_proxy:
        # Behind nginx: trust exactly one proxy for client IP, scheme and host (house style 14).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]

    sandbox = settings.sandbox
    if sandbox and settings.dingtalk_api_base == DEFAULTS["DINGTALK_API_BASE"]:
        # Sandbox mode never calls the real DingTalk: without an explicit simulator URL, run one here.
        from web.sandbox import start_simulator

        settings = settings.but(dingtalk_api_base=start_simulator(app))
        app.config["DINGTALK_API_BASE"] = settings.dingtalk_api_base
    if sandbox and settings.dingtalk_openapi_base == DEFAULTS["DINGTALK_OPENAPI_BASE"]:
        # The simulator serves both API generations on one base URL.
        settings = settings.but(dingtalk_openapi_base=settings.dingtalk_api_base)
        app.config["DINGTALK_OPENAPI_BASE"] = settings.dingtalk_openapi_base

    logs.init_app(app)
    metrics.init_app(app)
    store.init_app(app)
    app.extensions[EXTENSION] = build_runtime(settings, store.get_store(app))
    errors.init_app(app)

    from web.support import bp as support_bp

    app.register_blueprint(channel_bp)
    cors.init_app(app)
    app.register_blueprint(corp_bp)
    app.register_blueprint(keys_bp)
    app.register_blueprint(clients_bp)
    oidc.init_app(app)
    app.register_blueprint(events_bp)
    app.register_blueprint(support_bp)
    app.register_blueprint(callbacks_bp)
    if sandbox:
        from web.sandbox import bp as sandbox_bp
        from web.sandbox import register_demo_corp

        app.register_blueprint(sandbox_bp)
        register_demo_corp(app)
        log.warning("GATEWAY_SANDBOX=1: demo corp registered; never run sandbox mode in production")

    @app.get("/healthz")
    def healthz() -> tuple[Response, int]:
        client = store.get_store(app)
        ok = store.ping(client)
        near_cache, near_cache_info = get_runtime(app).near_cache_status()
        body = {
            "status": "ok" if ok else "degraded",
            "store": "ok" if ok else "unreachable",
            "store_mode": store.mode_of(client),  # single, sentinel, cluster or in-process
            # Informational: without it every page view reads the ticket from the store (slower, still correct).
            "near_cache": near_cache,
            # The server it tracks, how often it emptied itself (every reconnect, e.g. a failover), why it is off.
            "near_cache_info": near_cache_info,
            "sandbox": sandbox,
            # Informational too: what `flask events stream` reports per app (state, last event); {} when it never ran.
            "streams": _streams(app) if ok else {},
        }
        return jsonify(body), 200 if ok else 503

    return app


def _streams(app: Flask) -> dict[str, Any]:
    """The stream process's reports (corp/stream_state.py), or {} when the store refuses to say."""
    try:
        return StreamStates(store.get_store(app)).read_all()
    except redis.RedisError:  # the store went away between the ping and this read: healthz still answers
        log.warning("healthz: stream states unreadable", exc_info=True)
        return {}
