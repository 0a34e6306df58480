"""Prometheus metrics of the web layer (requests by route), and the /metrics endpoint, which also reports oapi's
(oapi/metrics.py: upstream calls by API and errcode, both API generations; credential fetches and forced refreshes
by corp and pipeline, the current-generation `app:token` and `app:ticket` included)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response
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


def _registry() -> CollectorRegistry:
    # Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, aggregate every worker's numbers.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class RequestMetrics:
    """WSGI layer: count and time every request by endpoint, method and status.

    A WSGI layer for the same reason as `gateway.logs.RequestIds`: Flask hooks cost several times more per
    request than the two metric updates themselves. The endpoint is read from the Flask request object, which
    Werkzeug keeps in the environ until the request context ends (after the response has started), so labels
    stay route names (bounded), never raw paths.
    """

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app
        # Labelled children looked up once per label set: `.labels()` costs more than the increment itself.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[str, Any] = {}

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.perf_counter()
        seen: list[tuple[str, str]] = []

        def recorded(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            rule = getattr(environ.get("werkzeug.request"), "url_rule", None)
            seen.append((rule.endpoint if rule is not None else "unmatched", status[:3]))
            return start_response(status, headers, exc_info)

        body = self.wsgi_app(environ, recorded)
        if seen:
            self._observe(*seen[-1], environ.get("REQUEST_METHOD", ""), time.perf_counter() - started)
        return body  # type: ignore[no-any-return]

    def _observe(self, endpoint: str, status: str, method: str, seconds: float) -> None:
        key = (endpoint, method, status)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = HTTP_REQUESTS.labels(*key)
        counter.inc()
        histogram = self._histograms.get(endpoint)
        if histogram is None:
            histogram = self._histograms[endpoint] = HTTP_LATENCY.labels(endpoint)
        histogram.observe(seconds)


def init_app(app: Flask) -> None:
    """Count and time every request, and expose GET /metrics."""
    app.wsgi_app = RequestMetrics(app.wsgi_app)  # type: ignore[method-assign]

    @app.get("/metrics")
    def metrics() -> Response:
        # content_type, not mimetype: CONTENT_TYPE_LATEST already names its charset, and Flask would add another.
        return Response(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)
