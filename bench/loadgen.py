"""A small closed-loop HTTP load generator: P processes x T threads, one keep-alive connection per thread.

Python, not wrk, so the benchmarks need nothing beyond the project's venv. Each thread sends its requests back to
back (closed loop) until its list runs out or the deadline passes, and records each request's latency. On a
2-core machine the generator competes with the server for CPU: compare figures from the same run only.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

# (method, path-with-query, JSON body or None, extra headers)
Request = tuple[str, str, Any, dict[str, str]]


@dataclass
class Result:
    """What one load run measured."""

    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def throughput(self) -> float:
        return self.ok / self.elapsed if self.elapsed else 0.0

    @classmethod
    def merged(cls, parts: Sequence[Result], elapsed: float) -> Result:
        """One result from the parts that threads or processes measured side by side over `elapsed`."""
        total = cls(elapsed=elapsed)
        for part in parts:
            total.latencies.extend(part.latencies)
            total.errors += part.errors
            for k, v in part.statuses.items():
                total.statuses[k] = total.statuses.get(k, 0) + v
        return total

    def percentile(self, q: float) -> float:
        """The q-th percentile latency in milliseconds (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        rank = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
        return ordered[rank] * 1000

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.ok,
            "errors": self.errors,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "seconds": round(self.elapsed, 3),
            "rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50), 2),
            "p99_ms": round(self.percentile(99), 2),
        }


def _connect(base: str) -> http.client.HTTPConnection:
    parts = urlsplit(base)
    host, port = parts.hostname or "127.0.0.1", parts.port
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the local stack's certificate is self-signed
        return http.client.HTTPSConnection(host, port, timeout=30, context=context)
    return http.client.HTTPConnection(host, port, timeout=30)


def _thread(base: str, requests: Sequence[Request], deadline: float, expect: int, out: Result) -> None:
    conn = _connect(base)
    for method, path, body, headers in requests:
        if time.perf_counter() > deadline:
            break
        data = None if body is None else json.dumps(body).encode()
        hdrs = dict(headers)
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException):
            out.errors += 1
            conn.close()
            conn = _connect(base)
            continue
        took = time.perf_counter() - started
        out.statuses[resp.status] = out.statuses.get(resp.status, 0) + 1
        if resp.status == expect:
            out.latencies.append(took)
        else:
            out.errors += 1
    conn.close()


def _process(base: str, chunks: list[list[Request]], seconds: float, expect: int) -> Result:
    deadline = time.perf_counter() + seconds
    results = [Result() for _ in chunks]
    threads = [
        threading.Thread(target=_thread, args=(base, chunk, deadline, expect, res))
        for chunk, res in zip(chunks, results, strict=True)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Result.merged(results, time.perf_counter() - started)


def run(
    base: str,
    requests: Sequence[Request],
    *,
    seconds: float,
    processes: int = 2,
    threads: int = 4,
    expect: int = 200,
) -> Result:
    """Spread requests round-robin over processes x threads and send them, for at most `seconds`."""
    slots = processes * threads
    per_slot = [list(requests[i::slots]) for i in range(slots)]
    chunks = [per_slot[p * threads : (p + 1) * threads] for p in range(processes)]
    if processes == 1:
        parts = [_process(base, chunks[0], seconds, expect)]
    else:
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.starmap(_process, [(base, c, seconds, expect) for c in chunks])
    # Throughput over the processes' own busy time, not pool start-up.
    return Result.merged(parts, max(p.elapsed for p in parts))


def repeat(request: Request, count: int) -> list[Request]:
    """The same request count times (for endpoints without single-use inputs)."""
    return [request] * count
