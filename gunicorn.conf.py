"""gunicorn settings for the gateway behind nginx: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Command-line flags override these (`-w 4`, `-b 127.0.0.1:9000`); WEB_CONCURRENCY and GATEWAY_THREADS set the
defaults. Keep `bind` on loopback: the app trusts X-Forwarded-* from exactly one proxy (GATEWAY_TRUST_PROXY=1),
so only nginx may reach it.
"""

from __future__ import annotations

import os

from gateway.config import DEFAULTS

bind = os.environ.get("GATEWAY_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# Threads, because a login spends most of its time waiting: on DingTalk (two HTTPS calls on a cold cache) and, in
# a burst, for its turn in the pacing (oapi/pacing.py: up to GATEWAY_UPSTREAM_MAX_WAIT, 5 s, asleep). A sleeping
# thread costs memory, not CPU, but it is a thread a page view cannot have: at most GATEWAY_UPSTREAM_MAX_QUEUED
# (48) of a worker's threads may wait for a turn, and a worker has 16 more, so pages load at their idle speed during
# a burst of logins (docs/benchmarks.md, "Upstream quota"; with 4 threads a burst left page views waiting 8 s).
worker_class = "gthread"
_queued = int(os.environ.get("GATEWAY_UPSTREAM_MAX_QUEUED") or DEFAULTS["GATEWAY_UPSTREAM_MAX_QUEUED"])
threads = int(os.environ.get("GATEWAY_THREADS") or _queued + 16)
# Above nginx's proxy_read_timeout (20 s) and the gateway's own upstream timeouts, so nginx answers first.
timeout = 30
graceful_timeout = 20
# Below nginx's upstream keepalive idle time would be wasteful; nginx reuses these connections.
keepalive = 30

# Request lines and header fields up to gunicorn's maximum, 8190 bytes (the default line limit, 4094, answered
# longer ones with gunicorn's own HTML 400, and a page URL carried in `url=` gets long), and as many header
# fields as nginx can pass. nginx.conf's large_client_header_buffers (4 x 8000 bytes) refuses anything larger
# first, with the gateway's JSON error; only nginx reaches gunicorn (loopback).
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 32768

accesslog = os.environ.get("GATEWAY_ACCESS_LOG", "-")
# Page URLs (request line, Referer) can carry auth codes and tickets: logged through gateway.trace's redaction.
logger_class = "gateway.logs.AccessLogger"
# `{…}e` are WSGI environ values after the app ran, i.e. what the gateway believed after ProxyFix: the client
# address, scheme and host. The request id is nginx's, echoed by the gateway.
access_log_format = (
    '%({remote_addr}e)s "%(r)s" %(s)s %(b)s %(M)sms scheme=%({wsgi.url_scheme}e)s host=%({http_host}e)s '
    'referer="%(f)s" rid=%({x-request-id}o)s'
)

# Prometheus across workers: each worker writes its numbers to files in one directory and /metrics (answered by
# any worker) sums them, so a scrape does not see whichever worker happened to answer. Set it before the
# workers import prometheus_client; a dead worker's live gauges are dropped by child_exit.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="dtgw-prometheus-")


def child_exit(server: object, worker: object) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[attr-defined]
