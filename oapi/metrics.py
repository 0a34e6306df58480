"""oapi's Prometheus metrics: upstream calls by API and errcode, credential fetches by corp and pipeline.

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
UPSTREAM_PACED = Counter(
    "dtgw_upstream_paced_total",
    "Upstream calls by what pacing did with them (at_once, queued, refused)",
    ["api", "outcome"],
)
