"""Configuration from the environment, with the contract's names and defaults, read once into a typed, frozen
`Settings` (`load_settings`): every part reads `settings.ticket_cooldown`, never `int(config["GATEWAY_…"])`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gateway.store import SOCKET_TIMEOUT

# Only sandbox mode may run without a secret key: its demo corp's secrets are public anyway.
SANDBOX_SECRET_KEY = "sandbox-only-insecure-key-never-use-in-production"

DEFAULTS: dict[str, Any] = {
    "DINGTALK_API_BASE": "https://oapi.dingtalk.com",
    "DINGTALK_OPENAPI_BASE": "https://api.dingtalk.com",  # the current-generation API (/v1.0/...)
    "REDIS_URL": None,
    "GATEWAY_SECRET_KEY": None,
    "GATEWAY_SANDBOX": False,
    "GATEWAY_ADMIN_TOKEN": None,
    # `iss` of every token the gateway signs and the OpenID Connect issuer: the gateway's public base URL. Unset
    # (sandbox mode, or no OpenID Connect in use): the URL the request came in on.
    "GATEWAY_ISSUER": None,
    # Tunables (seconds unless named otherwise); the contract leaves these to us.
    "GATEWAY_HTTP_TIMEOUT": 5.0,  # per upstream call (connect and read)
    "GATEWAY_TOKEN_MARGIN": 300,  # refresh credentials this long before DingTalk expires them
    "GATEWAY_TOKEN_JITTER": 30,  # spreads refreshes of many corps over time
    "GATEWAY_LOCK_WAIT": 3.0,  # how long a caller waits for another worker's refresh
    "GATEWAY_LOCK_TTL": 2.0,  # a crashed refresher's lock frees itself after this (renewed while its fetch runs)
    # Refresh-ahead (oapi/refresh.py; only with REDIS_URL): each process's refresher looks every REFRESH_AHEAD_EVERY
    # seconds (jittered) at the credentials its requests used within REFRESH_AHEAD_IDLE, and refreshes each one that
    # would enter its margin within REFRESH_AHEAD_LEAD, so that no request waits on a fetch.
    "GATEWAY_REFRESH_AHEAD": True,
    "GATEWAY_REFRESH_AHEAD_LEAD": 60.0,
    "GATEWAY_REFRESH_AHEAD_EVERY": 5.0,
    "GATEWAY_REFRESH_AHEAD_IDLE": 7200.0,  # a credential used within its lifetime is kept warm
    "GATEWAY_TICKET_COOLDOWN": 60,  # at most one forced ticket refresh per corp per window
    "GATEWAY_CONFIG_ERROR_TTL": 30,  # how long a configuration error on a token fetch is remembered
    "GATEWAY_USERID_CACHE_TTL": 3600,  # unionid -> userid mapping
    "GATEWAY_FOLLOW_CACHE_TTL": 60,  # a follower's follow status (--require-follow); the contract caps it at 60
    # dd.config `type` of a current service-window app: DingTalk's docs never say (dingtalk-oapi.md §7.2, U); 0,
    # the type of every app with its own JSAPI ticket, is the likely one. Kind internal always uses 0.
    "GATEWAY_SERVICE_WINDOW_CONFIG_TYPE": 0,
    "GATEWAY_SESSION_TTL": 7200,  # session token lifetime
    "GATEWAY_CALLBACK_WINDOW": 300,  # accepted callback timestamp skew
    # How long recording an event waits for a replica of the store's primary to have it (Redis WAIT); an event no
    # replica acknowledged in time is answered 503, and DingTalk delivers it again. Below the store's socket
    # timeout (gateway/store.py SOCKET_TIMEOUT). Only when the primary has replicas.
    "GATEWAY_REPLICA_ACK_TIMEOUT": 1.0,
    "GATEWAY_TRACE_LIMIT": 200,  # trace entries kept per corp
    "GATEWAY_NEAR_CACHE": True,  # keep credentials in process memory while Redis reports them unchanged
    "GATEWAY_CORP_CACHE_TTL": 2.0,  # a registration change made on another host is seen within this
    "GATEWAY_MAX_BODY": 16 * 1024,  # bytes, every route but the push receiver
    # DingTalk's pushes (a user_leave_org for hundreds of users, base64 on top) outgrow GATEWAY_MAX_BODY, and a
    # refused push is retried into the same refusal until DingTalk drops it. nginx.conf's callback location
    # allows the same (client_max_body_size 1m).
    "GATEWAY_CALLBACK_MAX_BODY": 1024 * 1024,  # bytes
    "GATEWAY_BUSY_RETRIES": 3,  # errcode -1 retries
    # Pacing (oapi/pacing.py): calls per second per corp (v1.0: per app) and API, for every worker and host
    # together; below DingTalk's 20/s, leaving room for delivery jitter and anyone else using the app. 0: off.
    "GATEWAY_UPSTREAM_RATE": 18.0,
    "GATEWAY_UPSTREAM_MAX_WAIT": 5.0,  # the longest a call queues for its slot; beyond it 503 at once
    # Threads of one process that may wait for a slot at once (the rest get 503 at once): gunicorn.conf.py gives a
    # worker more threads than this, so page views always find one free.
    "GATEWAY_UPSTREAM_MAX_QUEUED": 48,
    # Failed logins (code_invalid) allowed per client address and corp, and per corp from addresses that have
    # failed before, in a window of GATEWAY_JUNK_WINDOW seconds (channel/junk.py). 0: no budget.
    "GATEWAY_JUNK_ADDRESS_BUDGET": 10,
    "GATEWAY_JUNK_CORP_BUDGET": 100,
    "GATEWAY_JUNK_WINDOW": 600,
    "GATEWAY_SANDBOX_ORIGINS": "http://127.0.0.1:5000,http://localhost:5000",
    "GATEWAY_TRUST_PROXY": False,  # behind nginx: trust exactly one proxy's X-Forwarded-*
    "GATEWAY_SUPPORT_SESSION_TTL": 8 * 3600,  # support console login lifetime
    "GATEWAY_SUPPORT_MAX_FAILURES": 5,  # wrong admin tokens per client IP before a lockout
    "GATEWAY_SUPPORT_FAIL_WINDOW": 300,  # ... within this many seconds (also the lockout's length)
    "GATEWAY_SUPPORT_SELFTEST_COOLDOWN": 5,  # credential self-tests per corp at most this often
    # Stream mode (`flask events stream`, dingtalk-oapi.md §7.5): reconnect backoff bounds, the timeout of opening a
    # connection (the HTTP call and the WebSocket handshake), and how often the registry is read for apps to add,
    # replace or drop.
    "GATEWAY_STREAM_BACKOFF_MIN": 1.0,
    "GATEWAY_STREAM_BACKOFF_MAX": 60.0,
    "GATEWAY_STREAM_TIMEOUT": 10.0,
    "GATEWAY_STREAM_RESCAN": 30.0,
}

_BOOL = {"1", "true", "yes", "on"}


def _coerce(default: Any, raw: Any) -> Any:
    """A value of the default's type, from the environment's text or an override (tests, `create_app(...)`)."""
    if isinstance(default, bool):
        return raw if isinstance(raw, bool) else str(raw).strip().lower() in _BOOL
    if isinstance(default, int):
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError("not a whole number")
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw or None


def load_config(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read every setting from the environment, then apply explicit overrides (tests)."""
    env = os.environ if env is None else env
    config = dict(DEFAULTS)
    for name, default in DEFAULTS.items():
        if name in env and env[name] != "":
            try:
                config[name] = _coerce(default, env[name]) if default is not None else env[name]
            except ValueError as e:
                raise RuntimeError(f"{name}={env[name]!r} is not a valid value: {e}") from e
    for name, value in (overrides or {}).items():
        default = DEFAULTS.get(name)
        try:
            config[name] = _coerce(default, value) if default is not None and value is not None else value
        except (TypeError, ValueError) as e:
            raise RuntimeError(f"{name}={value!r} is not a valid value: {e}") from e
    if config["GATEWAY_SANDBOX"] and not config["GATEWAY_SECRET_KEY"]:
        config["GATEWAY_SECRET_KEY"] = SANDBOX_SECRET_KEY
    if not config["GATEWAY_SECRET_KEY"]:
        raise RuntimeError(
            "GATEWAY_SECRET_KEY is required (it signs session tokens and seals stored secrets); "
            "set it, or set GATEWAY_SANDBOX=1 to try the gateway against its simulator."
        )
    if not 1 <= config["GATEWAY_FOLLOW_CACHE_TTL"] <= 60:
        raise RuntimeError("GATEWAY_FOLLOW_CACHE_TTL must be between 1 and 60 seconds (the contract's bound)")
    if not 0 < config["GATEWAY_STREAM_BACKOFF_MIN"] <= config["GATEWAY_STREAM_BACKOFF_MAX"]:
        raise RuntimeError("GATEWAY_STREAM_BACKOFF_MIN must be above 0 and at most GATEWAY_STREAM_BACKOFF_MAX")
    if config["GATEWAY_STREAM_TIMEOUT"] <= 0 or config["GATEWAY_STREAM_RESCAN"] <= 0:
        raise RuntimeError("GATEWAY_STREAM_TIMEOUT and GATEWAY_STREAM_RESCAN must be above 0 seconds")
    if config["GATEWAY_UPSTREAM_RATE"] < 0 or config["GATEWAY_UPSTREAM_MAX_WAIT"] < 0:
        raise RuntimeError("GATEWAY_UPSTREAM_RATE and GATEWAY_UPSTREAM_MAX_WAIT must not be negative (rate 0: off)")
    if config["GATEWAY_UPSTREAM_MAX_QUEUED"] < 1:
        raise RuntimeError("GATEWAY_UPSTREAM_MAX_QUEUED must be at least 1")
    if min(config[n] for n in ("GATEWAY_JUNK_ADDRESS_BUDGET", "GATEWAY_JUNK_CORP_BUDGET", "GATEWAY_JUNK_WINDOW")) < 0:
        raise RuntimeError("GATEWAY_JUNK_ADDRESS_BUDGET, _CORP_BUDGET and _WINDOW must not be negative (0: no budget)")
    if not 0 < config["GATEWAY_REFRESH_AHEAD_EVERY"] < config["GATEWAY_REFRESH_AHEAD_LEAD"]:
        # A credential is due for `lead` seconds before it leaves the store: every pass must be able to meet it.
        raise RuntimeError("GATEWAY_REFRESH_AHEAD_EVERY must be above 0 and below GATEWAY_REFRESH_AHEAD_LEAD")
    if not 0 < config["GATEWAY_REPLICA_ACK_TIMEOUT"] <= SOCKET_TIMEOUT - 0.5:
        raise RuntimeError(
            f"GATEWAY_REPLICA_ACK_TIMEOUT must be above 0 and at most {SOCKET_TIMEOUT - 0.5:g} seconds "
            f"(the store's socket timeout is {SOCKET_TIMEOUT:g} s, and Redis's WAIT must answer before it)"
        )
    if config["GATEWAY_SERVICE_WINDOW_CONFIG_TYPE"] not in (0, 1):
        raise RuntimeError("GATEWAY_SERVICE_WINDOW_CONFIG_TYPE must be 0 or 1 (dd.config's type)")
    if config["GATEWAY_ISSUER"]:
        config["GATEWAY_ISSUER"] = str(config["GATEWAY_ISSUER"]).rstrip("/")
    config["DINGTALK_API_BASE"] = str(config["DINGTALK_API_BASE"]).rstrip("/")
    config["DINGTALK_OPENAPI_BASE"] = str(config["DINGTALK_OPENAPI_BASE"]).rstrip("/")
    return config


def setting_name(variable: str) -> str:
    """The Settings attribute of an environment variable: GATEWAY_TICKET_COOLDOWN -> ticket_cooldown."""
    return variable.removeprefix("GATEWAY_").lower()


@dataclass(frozen=True)
class Settings:
    """Every setting, typed, built once per app from `load_config` (defaults live in DEFAULTS only)."""

    dingtalk_api_base: str
    dingtalk_openapi_base: str
    redis_url: str | None
    secret_key: str
    sandbox: bool
    admin_token: str | None
    issuer: str | None
    http_timeout: float
    token_margin: int
    token_jitter: int
    lock_wait: float
    lock_ttl: float
    refresh_ahead: bool
    refresh_ahead_lead: float
    refresh_ahead_every: float
    refresh_ahead_idle: float
    ticket_cooldown: int
    config_error_ttl: int
    userid_cache_ttl: int
    follow_cache_ttl: int
    service_window_config_type: int
    session_ttl: int
    callback_window: int
    replica_ack_timeout: float
    trace_limit: int
    near_cache: bool
    corp_cache_ttl: float
    max_body: int
    callback_max_body: int
    busy_retries: int
    upstream_rate: float
    upstream_max_wait: float
    upstream_max_queued: int
    junk_address_budget: int
    junk_corp_budget: int
    junk_window: int
    sandbox_origins: str
    trust_proxy: bool
    support_session_ttl: int
    support_max_failures: int
    support_fail_window: int
    support_selftest_cooldown: int
    stream_backoff_min: float
    stream_backoff_max: float
    stream_timeout: float
    stream_rescan: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """The settings in a `load_config` mapping (other keys, such as Flask's own, are ignored)."""
        return cls(**{setting_name(name): config[name] for name in DEFAULTS})

    def but(self, **changes: Any) -> Settings:
        """A copy with `changes` (attribute names), for tests and sandbox mode's simulator URL."""
        return replace(self, **changes)


def load_settings(env: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """`load_config`, typed and frozen."""
    return Settings.from_config(load_config(env, overrides))
