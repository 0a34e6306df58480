"""oapi's Prometheus metrics: upstream calls by API and errcode (a v1.0 call: its path, and its string code or its
HTTP status), credential fetches and forced refreshes by corp and pipeline (`app:token`, `app:ticket` beside the
legacy pipelines), who fetched them and who waited for them, pacing, and Stream mode.

Module-level, because prometheus_client registries are process-wide; the gateway's /metrics reports them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPSTREAM_CALLS = Counter("dtgw_upstream_calls_total", "Calls to DingTalk", ["api", "errcode"])
UPSTREAM_LATENCY = Histogram("dtgw_upstream_call_duration_seconds", "DingTalk call latency", ["api"])
CREDENTIAL_FETCHES = Counter(
    "dtgw_credential_fetches_total",
    "Token and ticket fetches from DingTalk",
    ["corpid", "pipeline", "outcome"],
)
# Forced refreshes (the support console's button; `trigger` says who forced it) by outcome: refreshed, cooldown
# (refused: one ran within GATEWAY_TICKET_COOLDOWN) or error. What a refresh fetched is in CREDENTIAL_FETCHES too.
FORCED_REFRESHES = Counter(
    "dtgw_forced_refreshes_total",
    "Forced credential refreshes",
    ["corpid", "pipeline", "trigger", "outcome"],
)

# Stream mode (oapi/stream.py), counted in the stream process (`flask events stream`, which serves them on its own
# --metrics-port): events by outcome (stored, duplicate, handshake; failed: not recorded, so not acknowledged;
# malformed), acknowledgements sent, reconnects by why the previous connection ended, and whether each app is
# connected now.
STREAM_EVENTS = Counter("dtgw_stream_events_total", "Events received over Stream mode", ["corpid", "outcome"])
STREAM_ACKS = Counter("dtgw_stream_acks_total", "Events acknowledged over Stream mode", ["corpid"])
STREAM_RECONNECTS = Counter(
    "dtgw_stream_reconnects_total", "Stream mode reconnects, by why the connection ended", ["corpid", "reason"]
)
STREAM_CONNECTED = Gauge("dtgw_stream_connected", "1 while an app's Stream connection is up", ["corpid"])
UPSTREAM_PACED = Counter(
    "dtgw_upstream_paced_total",
    "Upstream calls by what pacing did with them (at_once, queued, refused)",
    ["api", "outcome"],
)

# Refresh-ahead's two figures (oapi/refresh.py): who fetched each stored credential, the background refresher
# ("ahead") or a request that found it missing ("request"); and how many requests found one missing and waited.
CREDENTIAL_REFRESHES = Counter(
    "dtgw_credential_refreshes_total",
    "Token and ticket fetches stored, by who fetched: the background refresher (ahead) or a request (request)",
    ["corpid", "pipeline", "path"],
)
CREDENTIAL_WAITS = Counter(
    "dtgw_credential_waits_total",
    "Requests that found a token or ticket missing and waited for its fetch (their own or another worker's)",
    ["corpid", "pipeline"],
)
