"""Benchmarks of the production stack (scripts/serve's Stack): `python -m bench.run` from the repository root.

Three parts, all against one Redis and one shared simulator process (throttling off):

  workers  /channel/config and /channel/login, direct to gunicorn and through nginx (TLS), for 1, 2 and 4
           workers: throughput and p50/p99 latency, drawn into docs/bench-workers.png (issue 8)
  ratio    /channel/config against bench/bare_app.py's /bare, same gunicorn settings, same run, alternating
           rounds: gateway/bare throughput (issue 5, target >= 0.85)
  login    /channel/login one at a time with 20 ms of simulated upstream latency: p50/p99, and the gateway's
           own share = client-observed time minus the upstream time the gateway's /metrics recorded (issue 5)

Results go to bench/results.json; the tables are printed as Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from importlib.machinery import SourceFileLoader
from importlib.util import module_from_spec, spec_from_loader
from pathlib import Path
from statistics import median
from types import ModuleType
from typing import Any

import requests

if not __package__:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import loadgen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CORPID, AGENTID = "dingdemo0001", "1000001"
EMPLOYEE_UNIONID = "uEmpl0yee8fQ2xKzN4"


def load_serve() -> ModuleType:
    loader = SourceFileLoader("serve", str(ROOT / "scripts" / "serve"))
    spec = spec_from_loader("serve", loader)
    assert spec is not None
    module = module_from_spec(spec)
    loader.exec_module(module)
    return module


serve = load_serve()


def lift_rate_limits(conf: str) -> str:
    """Drop the per-IP limit_req lines: every benchmark request comes from one loopback address."""
    return re.sub(r"^\s*limit_req zone=.*$", "", conf, flags=re.MULTILINE)


def local() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def page_url(stack: Any) -> str:
    return f"{stack.public_url}/channel/login?corpid={CORPID}&agentid={AGENTID}"


def config_request(stack: Any) -> loadgen.Request:
    return ("GET", f"/channel/config?corpid={CORPID}&agentid={AGENTID}", None, {"Referer": page_url(stack)})


def bare_request(stack: Any) -> loadgen.Request:
    """The same request as config_request (query, Referer), to the bare endpoint: only the work behind differs."""
    method, path, body, headers = config_request(stack)
    return method, path.replace("/channel/config", "/bare", 1), body, headers


def mint_codes(api_base: str, count: int) -> list[str]:
    """Single-use auth codes for the demo employee, minted before a timed loop."""
    with local() as session:
        return [
            session.post(f"{api_base}/_client/auth_code", json={"corpid": CORPID, "unionid": EMPLOYEE_UNIONID}).json()[
                "code"
            ]
            for _ in range(count)
        ]


def login_requests(codes: list[str]) -> list[loadgen.Request]:
    return [("POST", "/channel/login", {"corpid": CORPID, "code": code}, {}) for code in codes]


def set_latency(api_base: str, seconds: float) -> None:
    with local() as session:
        session.post(f"{api_base}/_sim/latency", json={"seconds": seconds, "api": "*"}).raise_for_status()


def warm_up(stack: Any, base: str) -> None:
    """Fetch tokens and the ticket, fill the unionid cache, open pools, in every worker (enough requests)."""
    loadgen.run(base, loadgen.repeat(config_request(stack), 200), seconds=5, processes=1, threads=4)
    loadgen.run(base, login_requests(mint_codes(stack.api_base, 40)), seconds=5, processes=1, threads=4)


def start_stack(infra: Any, workers: int, threads: int, **kw: Any) -> Any:
    stack = serve.Stack(
        workers=workers,
        threads=threads,
        https_port=serve.free_port(),
        redis_url=infra.redis_url,
        api_base=infra.api_base,
        conf_filter=lift_rate_limits,
        **kw,
    )
    return stack.start()


# ---- parts ------------------------------------------------------------------------------------------------------


def bench_workers(infra: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
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


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU time of these processes and their children's threads so far (Linux /proc)."""
    total = 0
    for pid in pids:
        family = [pid]
        try:
            family += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
        for member in family:
            try:
                fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def pids_of(stack: Any, *names: str) -> list[int]:
    return [proc.pid for name, proc in stack.procs if name in names]


def bench_ratio(infra: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Alternate short rounds of the two endpoints; on a shared machine, paired rounds and CPU time per request
    are steadier than one long run of each."""
    stack = start_stack(infra, args.ratio_workers, args.threads)
    bare = serve.Stack(
        workers=args.ratio_workers, threads=args.threads, sandbox=False, app="bench.bare_app:create_app()"
    )
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


def scrape(gunicorn_url: str) -> dict[str, float]:
    """The gateway's upstream and login-request time and counts, from its Prometheus text."""
    text = local().get(f"{gunicorn_url}/metrics").text
    wanted = {
        "upstream_sum": r"^dtgw_upstream_call_duration_seconds_sum\{[^}]*\} (\S+)$",
        "upstream_count": r"^dtgw_upstream_call_duration_seconds_count\{[^}]*\} (\S+)$",
        "login_sum": r'^dtgw_http_request_duration_seconds_sum\{endpoint="channel.login_view"\} (\S+)$',
        "login_count": r'^dtgw_http_request_duration_seconds_count\{endpoint="channel.login_view"\} (\S+)$',
    }
    return {k: sum(float(v) for v in re.findall(p, text, flags=re.MULTILINE)) for k, p in wanted.items()}


def bench_login_latency(infra: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
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


# ---- output -----------------------------------------------------------------------------------------------------


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = {"direct": "-", "nginx": "--"}
    for endpoint, color in (("config", "tab:blue"), ("login", "tab:orange")):
        for target, style in styles.items():
            sel = sorted((r for r in rows if r["endpoint"] == endpoint and r["target"] == target), key=_w)
            xs = [r["workers"] for r in sel]
            axes[0].plot(xs, [r["rps"] for r in sel], style, color=color, marker="o", label=f"{endpoint} {target}")
            ax = axes[1] if endpoint == "config" else axes[2]
            ax.plot(xs, [r["p50_ms"] for r in sel], style, color="tab:green", marker="o", label=f"p50 {target}")
            ax.plot(xs, [r["p99_ms"] for r in sel], style, color="tab:red", marker="^", label=f"p99 {target}")
    axes[0].set_title("throughput")
    axes[0].set_ylabel("requests/s")
    axes[1].set_title("GET /channel/config latency")
    axes[2].set_title("POST /channel/login latency")
    for ax in axes[1:]:
        ax.set_ylabel("ms")
    for ax in axes:
        ax.set_xlabel("gunicorn workers")
        ax.set_xticks(sorted({r["workers"] for r in rows}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"gateway behind nginx vs direct to gunicorn ({os.cpu_count()} CPUs, load generator on the same host)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _w(row: dict[str, Any]) -> int:
    return int(row["workers"])


def markdown(results: dict[str, Any]) -> str:
    out = []
    if results.get("workers"):
        out += [
            "| workers | endpoint | path | req/s | p50 ms | p99 ms | errors |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for r in sorted(results["workers"], key=lambda r: (r["endpoint"], r["workers"], r["target"])):
            out.append(
                f"| {r['workers']} | {r['endpoint']} | {r['target']} | {r['rps']:.0f} | {r['p50_ms']:.1f} "
                f"| {r['p99_ms']:.1f} | {r['errors']} |"
            )
        out.append("")
    if results.get("ratio"):
        ratio = results["ratio"]
        out += [
            "| round | /channel/config req/s | /bare req/s | throughput ratio "
            "| server CPU ms/req config | server CPU ms/req bare | CPU ratio |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for i, r in enumerate(ratio["rounds"], 1):
            g, b = r["gateway"], r["bare"]
            out.append(
                f"| {i} | {g['rps']:.0f} | {b['rps']:.0f} | {r['ratio']:.3f} | {g['server_cpu_ms_per_request']:.3f} "
                f"| {b['server_cpu_ms_per_request']:.3f} | {r['cpu_ratio']:.3f} |"
            )
        out.append(
            f"| mean / median | {ratio['gateway_rps']:.0f} | {ratio['bare_rps']:.0f} | **{ratio['ratio']:.3f}** "
            f"(median {ratio['median_round_ratio']:.3f}) | {ratio['gateway_cpu_ms']:.3f} | {ratio['bare_cpu_ms']:.3f} "
            f"| **{ratio['median_cpu_ratio']:.3f}** |"
        )
        out.append("")
    if results.get("login"):
        out += [
            "| upstream latency | path | p50 ms | p99 ms | mean ms | upstream calls/login | upstream ms/login "
            "| own ms (mean − upstream) | of which in the app | of which gunicorn/nginx/client | own share |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in results["login"]:
            out.append(
                f"| {r['upstream_latency_ms']:.0f} ms | {r['target']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
                f"| {r['mean_ms']:.1f} | {r['upstream_calls_per_login']} | {r['upstream_ms_per_login']:.1f} "
                f"| {r['own_ms']:.1f} | {r['own_in_app_ms']:.1f} | {r['own_front_ms']:.1f} "
                f"| {r['own_share'] * 100:.0f} % |"
            )
    return "\n".join(out)


def _git_state() -> str:
    """The commit measured, and whether the working tree had uncommitted changes (gunicorn runs the tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True)
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["workers", "ratio", "login"], help="workers ratio login")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="gunicorn worker counts")
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker (default 4)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed loop (default 3)")
    parser.add_argument("--logins", type=int, default=800, help="codes minted per login loop (default 800)")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--client-threads", type=int, default=4, help="per client process (default 4)")
    parser.add_argument("--ratio-workers", type=int, default=2)
    parser.add_argument("--ratio-rounds", type=int, default=8)
    parser.add_argument("--ratio-seconds", type=float, default=1.5, help="length of each ratio round (default 1.5)")
    parser.add_argument("--upstream-latency", type=float, default=0.02, help="seconds (default 0.02)")
    parser.add_argument("--latency-logins", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "bench-workers.png")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": os.getloadavg(),
        "git": _git_state(),
    }
    infra = serve.Stack(sandbox=True, simulator_rate_limit=0)
    try:
        infra.start_redis()
        infra.start_simulator()
        if "workers" in args.parts:
            results["workers"] = bench_workers(infra, args)
            args.png.parent.mkdir(parents=True, exist_ok=True)
            plot(results["workers"], args.png)
        if "ratio" in args.parts:
            results["ratio"] = bench_ratio(infra, args)
        if "login" in args.parts:
            results["login"] = bench_login_latency(infra, args)
    finally:
        infra.stop()
    results["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print()
    print(markdown(results))
    print(f"\nload average at start {results['loadavg_at_start']}, at end {results['loadavg_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
