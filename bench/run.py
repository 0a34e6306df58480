"""Benchmarks of the production stack (sandbox/stack.py, as scripts/serve runs it): `python -m bench.run`.

Three parts, all against one Redis and one shared simulator process (throttling off):

  workers  /channel/config and /channel/login, direct to gunicorn and through nginx (TLS), for 1, 2 and 4
           workers: throughput and p50/p99 latency, drawn into docs/bench-workers.png (issue 8)
  ratio    /channel/config against bench/bare_app.py's /bare, same gunicorn settings, same run, alternating
           rounds: gateway/bare throughput (issue 5, target >= 0.85)
  login    /channel/login one at a time with 20 ms of simulated upstream latency: p50/p99, and the gateway's
           own share = client-observed time minus the upstream time the gateway's /metrics recorded (issue 5)

Run it from the repository root. Results go to bench/results.json; the tables are printed as Markdown for
docs/benchmarks.md. The parts are in bench/parts.py, what they start and send in bench/workload.py, the chart and
tables in bench/report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/run.py` as well as `python -m bench.run`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.parts import bench_login_latency, bench_ratio, bench_workers  # noqa: E402
from bench.report import git_state, markdown, plot  # noqa: E402
from sandbox.stack import ROOT, Stack  # noqa: E402


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
    parser.add_argument(
        "--redis-url",
        help="use this store (e.g. the REDIS_URL `python -m sandbox.redis_ha cluster` prints) instead of starting one",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "bench-workers.png")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": os.getloadavg(),
        "git": git_state(),
    }
    infra = Stack(sandbox=True, simulator_rate_limit=0)
    try:
        if args.redis_url:
            infra.redis_url = args.redis_url
        else:
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
