"""Instructions per request, counted by valgrind: `python -m bench.instructions` from the repository root.

The throughput ratio (`bench.run ratio`) is what issue 5 asks for, but on a shared 2-core machine one run of it
moves by ±0.03. Instruction counts do not: callgrind gives the same count for the same code whatever else the
machine is doing, so a change to the hot path can be judged by one run of this (docs/benchmarks.md).

Each side runs in one process, in a loop, under `valgrind --tool=callgrind`: the gateway's full WSGI stack as
gunicorn calls it (ProxyFix on, Prometheus in multiprocess mode, near cache live, a real Redis and the simulator),
and `bench/bare_app.py`. Each side runs twice, with N and 6N measured requests after the same warm-up; the
difference over 5N requests is the cost per request, start-up excluded. gunicorn's own per-request work is not
in these counts (it is the same for both sides), so the instruction ratio is lower than the throughput ratio.

Needs Debian's valgrind and redis-server. Prints a Markdown table; `--json` for the numbers alone; `--origin` sends
the `Origin` header a cross-origin page sends, so the CORS grant is counted too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/instructions.py` as well as `python -m bench.instructions`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID  # noqa: E402
from sandbox.stack import ROOT, Stack  # noqa: E402

ORIGIN = "https://127.0.0.1:8443"
PAGE = f"{ORIGIN}/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"
QUERY = f"corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"
WARM_UP = 300


def environ_for(path: str, origin: bool) -> dict[str, Any]:
    """The WSGI environ of the benchmark's request (bench/workload.py's config_request), as a test client builds it;
    with `origin`, as a cross-origin page sends it."""
    from werkzeug.test import EnvironBuilder

    headers = {"Referer": PAGE, "Host": "127.0.0.1:8000", "Accept-Encoding": "identity"}
    if origin:
        headers["Origin"] = ORIGIN
    return EnvironBuilder(path=f"{path}?{QUERY}", headers=headers).get_environ()  # type: ignore[no-any-return]


def gateway_app(redis_url: str, api_base: str) -> Any:
    """The gateway as gunicorn serves it behind nginx, with the simulator's demo corp registered."""
    from app import create_app
    from corp.registry import Corp
    from sandbox.demo import DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET
    from web.runtime import get_runtime

    app = create_app(
        {
            "REDIS_URL": redis_url,
            "DINGTALK_API_BASE": api_base,
            "GATEWAY_SECRET_KEY": "bench-instructions-" + "k" * 32,
            "GATEWAY_TRUST_PROXY": True,
            # Under valgrind a second lasts ~50 times longer: without this, re-reading the corp registration
            # every 2 s would weigh 50 times more per request than it does in production.
            "GATEWAY_CORP_CACHE_TTL": 3600,
        }
    )
    runtime = get_runtime(app)
    runtime.registry.add(
        Corp(
            corpid=DEMO_CORPID,
            agent_id=DEMO_AGENT_ID,
            origins=(ORIGIN,),
            corp_secret=DEMO_CORP_SECRET,
            channel_secret=DEMO_CHANNEL_SECRET,
        )
    )
    deadline = time.monotonic() + 10
    while runtime.near is not None and runtime.near.status() != "live" and time.monotonic() < deadline:
        time.sleep(0.05)
    return app


def child(side: str, measured: int, redis_url: str, api_base: str, origin: bool) -> None:
    """Serve WARM_UP + `measured` requests in-process (this is what runs under valgrind)."""
    if side == "gateway":
        app, path = gateway_app(redis_url, api_base), "/channel/config"
    else:
        from bench.bare_app import create_app

        app, path = create_app(), "/bare"
    environ = environ_for(path, origin)

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise SystemExit(f"{side}: {status}")
        if origin and side == "gateway" and ("Access-Control-Allow-Origin", ORIGIN) not in headers:
            raise SystemExit("gateway: no CORS grant for the registered origin")

    def serve_requests(count: int) -> None:
        for _ in range(count):
            b"".join(app(dict(environ), start_response))

    serve_requests(WARM_UP)
    # What the warm-up left for the collector is the same in both runs of a side; freezing it keeps one
    # full collection landing in one run and not the other from showing up as per-request cost.
    import gc

    gc.collect()
    gc.freeze()
    serve_requests(measured)
    sys.stdout.flush()
    os._exit(0)  # no teardown: its instructions would differ with nothing in the loop


def count(side: str, measured: int, redis_url: str, api_base: str, workdir: Path, origin: bool) -> int:
    """Total instructions of one child run under callgrind."""
    out = workdir / f"callgrind.{side}.{measured}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        "bench.instructions",
        "--child",
        side,
        str(measured),
        redis_url,
        api_base,
        "origin" if origin else "-",
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(dir=workdir)}
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    match = re.search(r"^summary: (\d+)$", out.read_text(), re.MULTILINE)
    if match is None:
        raise SystemExit(f"no summary line in {out}")
    return int(match.group(1))


def measure(measured: int, origin: bool) -> dict[str, Any]:
    infra = Stack(sandbox=True, simulator_rate_limit=0)
    # One Redis per concurrent run: client-side caching announcements are per key name, across databases.
    second = Stack(sandbox=True)
    results: dict[str, Any] = {"measured_requests": 5 * measured, "origin": origin}
    try:
        infra.start_redis()
        infra.start_simulator()
        second.start_redis()
        with tempfile.TemporaryDirectory(prefix="dtgw-instructions-") as tmp:
            for side in ("gateway", "bare"):
                assert infra.redis_url and second.redis_url and infra.api_base
                with ThreadPoolExecutor(2) as pool:  # the two runs of a side side by side, one Redis each
                    short = pool.submit(count, side, measured, infra.redis_url, infra.api_base, Path(tmp), origin)
                    long = pool.submit(count, side, 6 * measured, second.redis_url, infra.api_base, Path(tmp), origin)
                    results[side] = (long.result() - short.result()) // (5 * measured)
    finally:
        second.stop()
        infra.stop()
    results["ratio"] = round(results["bare"] / results["gateway"], 3)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="N: runs of N and 6N requests (default 200)")
    parser.add_argument("--origin", action="store_true", help="send Origin, as a cross-origin page does (a CORS grant)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, n, redis_url, api_base, origin = args.child
        child(side, int(n), redis_url, api_base, origin == "origin")
        return 0
    results = measure(args.requests, args.origin)
    if args.json:
        print(json.dumps(results))
        return 0
    print("| side | instructions per request |")
    print("|---|---:|")
    print(f"| `/channel/config` (gateway) | {results['gateway']:,} |")
    print(f"| `/bare` | {results['bare']:,} |")
    print(f"| bare / gateway | {results['ratio']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
