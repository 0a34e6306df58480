"""oapi's Prometheus metrics: upstream calls by API and errcode, credential fetches by corp and pipeline, and who
waited for them.

Module-level, because prometheus_client registries are process-wide; the gateway's /metrics reports them.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

UPSTREAM_CALLS = Counter("dtgw_upstream_calls_total", "Calls to DingTalk", ["api", "errcode"])
UPSTREAM_LATENCY = Histogram("dtgw_upstream_call_duration_seconds", "DingTalk call latency", ["api"])
CREDENTIAL_FETCHES = Counter(
    "dtgw_credential_fetches_total",
    "Token and ticket fetches from DingTalk",
    ["corpid", "pipeline", "outcome"],
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
