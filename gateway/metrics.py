"""Prometheus metrics: requests, upstream calls by API and errcode, credential fetches by corp and pipeline."""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

# Module-level, because prometheus_client registries are process-wide; create_app may run many times in tests.
HTTP_REQUESTS = Counter("dtgw_http_requests_total", "HTTP requests served", ["endpoint", "method", "status"])
HTTP_LATENCY = Histogram(
    "dtgw_http_request_duration_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
UPSTREAM_CALLS = Counter("dtgw_upstream_calls_total", "Calls to DingTalk", ["api", "errcode"])
UPSTREAM_LATENCY = Histogram("dtgw_upstream_call_duration_seconds", "DingTalk call latency", ["api"])
CREDENTIAL_FETCHES = Counter(
    "dtgw_credential_fetches_total",
    "Token and ticket fetches from DingTalk",
    ["corpid", "pipeline", "outcome"],
)


def _registry() -> CollectorRegistry:
    # Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, aggregate every worker's numbers.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def init_app(app: Flask) -> None:
    """Time every request and expose GET /metrics."""

    @app.before_request
    def _start_timer() -> None:
        g.dtgw_started = time.perf_counter()

    # Labelled children looked up once per label set: `.labels()` costs more than the increment itself.
    counters: dict[tuple[str, str, int], Any] = {}
    histograms: dict[str, Any] = {}

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.endpoint or "unmatched"
        key = (endpoint, request.method, response.status_code)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = HTTP_REQUESTS.labels(endpoint, request.method, str(response.status_code))
        counter.inc()
        started = g.get("dtgw_started")
        if started is not None:
            histogram = histograms.get(endpoint)
            if histogram is None:
                histogram = histograms[endpoint] = HTTP_LATENCY.labels(endpoint)
            histogram.observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(_registry()), mimetype=CONTENT_TYPE_LATEST)
