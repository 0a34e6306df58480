"""The three parts of `python -m bench.run`, each against the Redis and simulator of `infra` (a Stack).

workers  /channel/config and /channel/login, direct to gunicorn and through nginx (TLS), per worker count
ratio    /channel/config against bench/bare_app.py's /bare, alternating short rounds
login    /channel/login one at a time with simulated upstream latency, and the gateway's own share of it
"""

from __future__ import annotations

import argparse
import json
from statistics import median
from typing import Any

from bench import loadgen
from bench.workload import (
    bare_request,
    config_request,
    cpu_seconds,
    login_requests,
    mint_codes,
    pids_of,
    scrape,
    set_latency,
    start_stack,
    warm_up,
)
from sandbox.stack import Stack


def bench_workers(infra: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for workers in args.workers:
        stack = start_stack(infra, workers, args.threads)
        try:
            for target, base in (("direct", stack.gunicorn_url), ("nginx", stack.public_url)):
                warm_up(stack, base)
                cfg = loadgen.run(
                    base,
                    loadgen.repeat(config_request(stack), 1_000_000),
                    seconds=args.seconds,
                    processes=args.client_processes,
                    threads=args.client_threads,
                )
                codes = mint_codes(stack.api_base, args.logins)
                login = loadgen.run(
                    base,
                    login_requests(codes),
                    seconds=args.seconds,
                    processes=args.client_processes,
                    threads=args.client_threads,
                )
                for endpoint, res in (("config", cfg), ("login", login)):
                    row = {"workers": workers, "target": target, "endpoint": endpoint, **res.summary()}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        finally:
            stack.stop()
    return rows


def bench_ratio(infra: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate short rounds of the two endpoints; on a shared machine, paired rounds and CPU time per request
    are steadier than one long run of each."""
    stack = start_stack(infra, args.ratio_workers, args.threads)
    bare = Stack(workers=args.ratio_workers, threads=args.threads, sandbox=False, app="bench.bare_app:create_app()")
    try:
        bare.start_gunicorn()
        warm_up(stack, stack.gunicorn_url)
        loadgen.run(bare.gunicorn_url, loadgen.repeat(bare_request(stack), 200), seconds=5, processes=1)
        # The gateway's cost includes its Redis round trip; the bare app has none.
        sides: tuple[tuple[str, str, loadgen.Request, list[int]], ...] = (
            (
                "gateway",
                stack.gunicorn_url,
                config_request(stack),
                pids_of(stack, "gunicorn") + pids_of(infra, "redis"),
            ),
            ("bare", bare.gunicorn_url, bare_request(stack), pids_of(bare, "gunicorn")),
        )
        rounds: list[dict[str, Any]] = []
        for _ in range(args.ratio_rounds):
            pair: dict[str, Any] = {}
            for name, base, request, pids in sides:
                cpu_before = cpu_seconds(pids)
                res = loadgen.run(
                    base,
                    loadgen.repeat(request, 1_000_000),
                    seconds=args.ratio_seconds,
                    processes=args.client_processes,
                    threads=args.client_threads,
                )
                pair[name] = res.summary()
                pair[name]["server_cpu_ms_per_request"] = round((cpu_seconds(pids) - cpu_before) / res.ok * 1000, 3)
            pair["ratio"] = round(pair["gateway"]["rps"] / pair["bare"]["rps"], 3)
            pair["cpu_ratio"] = round(
                pair["bare"]["server_cpu_ms_per_request"] / pair["gateway"]["server_cpu_ms_per_request"], 3
            )
            rounds.append(pair)
            print(json.dumps(pair), flush=True)
    finally:
        bare.stop()
        stack.stop()
    gateway_rps = sum(r["gateway"]["rps"] for r in rounds) / len(rounds)
    bare_rps = sum(r["bare"]["rps"] for r in rounds) / len(rounds)
    return {
        "workers": args.ratio_workers,
        "threads": args.threads,
        "rounds": rounds,
        "gateway_rps": round(gateway_rps, 1),
        "bare_rps": round(bare_rps, 1),
        "ratio": round(gateway_rps / bare_rps, 3),
        "median_round_ratio": median(r["ratio"] for r in rounds),
        "gateway_cpu_ms": median(r["gateway"]["server_cpu_ms_per_request"] for r in rounds),
        "bare_cpu_ms": median(r["bare"]["server_cpu_ms_per_request"] for r in rounds),
        "median_cpu_ratio": median(r["cpu_ratio"] for r in rounds),
    }


def bench_login_latency(infra: Stack, args: argparse.Namespace) -> list[dict[str, Any]]:
    # One worker, so its /metrics holds every request's numbers; one request at a time, so latency is latency.
    stack = start_stack(infra, 1, args.threads)
    rows = []
    try:
        for latency in (0.0, args.upstream_latency):
            for target, base in (("direct", stack.gunicorn_url), ("nginx", stack.public_url)):
                set_latency(stack.api_base, 0)
                warm_up(stack, base)
                set_latency(stack.api_base, latency)
                codes = mint_codes(stack.api_base, args.latency_logins)
                before = scrape(stack.gunicorn_url)
                res = loadgen.run(base, login_requests(codes), seconds=60, processes=1, threads=1)
                after = scrape(stack.gunicorn_url)
                delta = {k: after[k] - before[k] for k in before}
                n = res.ok
                upstream_ms = delta["upstream_sum"] / n * 1000
                app_ms = delta["login_sum"] / n * 1000
                mean_ms = sum(res.latencies) / n * 1000
                row = {
                    "upstream_latency_ms": latency * 1000,
                    "target": target,
                    **res.summary(),
                    "mean_ms": round(mean_ms, 2),
                    "upstream_calls_per_login": round(delta["upstream_count"] / n, 2),
                    # Means: the gateway's metrics give totals, not per-request upstream times.
                    "upstream_ms_per_login": round(upstream_ms, 2),
                    "in_app_ms_per_login": round(app_ms, 2),
                    "own_ms": round(mean_ms - upstream_ms, 2),
                    "own_in_app_ms": round(app_ms - upstream_ms, 2),
                    "own_front_ms": round(mean_ms - app_ms, 2),
                    "own_share": round((mean_ms - upstream_ms) / mean_ms, 3),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        set_latency(stack.api_base, 0)
        stack.stop()
    return rows
