"""The gateway on each kind of store: one Redis, Redis Sentinel (a primary, a replica, three sentinels) and a Redis
Cluster of three primaries, all on loopback (sandbox/redis_ha.py). For each: /channel/config throughput and
latency from P processes × T threads for a set time, and the store commands each request costs, with the near
cache on and off (on a cluster: one tracking connection per primary).

    python -m bench.stores [--seconds 5] [--processes 2] [--threads 2] [--forms single sentinel cluster]

Each process serves with its own `create_app()` through Flask's test client (sandbox/traffic.py `run_timed`), so
the figures are the gateway's and the store's work, without gunicorn or a network between.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from typing import Any
from urllib.parse import quote

import redis

from app import create_app
from corp.registry import Corp
from gateway.store import connect
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from sandbox.processes import free_port
from sandbox.redis_ha import Cluster, Sentinels
from sandbox.redis_server import RedisServer
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from sandbox.traffic import PAGE, run_timed
from web.runtime import get_runtime

SECRET = "bench-secret-key"
# Commands that are not a request's: replication, sentinels' and the near cache's own pings, these statistics.
_HOUSEKEEPING = {"info", "ping", "replconf", "client", "subscribe", "publish", "config", "role", "cluster", "command"}


def _primaries(form: str, deployment: Any) -> list[int]:
    if form == "single":
        return [deployment.port]
    if form == "sentinel":
        return [deployment.primary_port()]
    return [server.port for server in deployment.servers]


def _commands(ports: list[int]) -> int:
    total = 0
    for port in ports:
        client = redis.Redis(port=port, decode_responses=True)
        try:
            stats: Any = client.info("commandstats")
            for name, counts in stats.items():
                if name.removeprefix("cmdstat_").split("|")[0] not in _HOUSEKEEPING:
                    total += int(counts["calls"])
        finally:
            client.close()
    return total


def _reset(ports: list[int]) -> None:
    for port in ports:
        client = redis.Redis(port=port)
        try:
            client.config_resetstat()
        finally:
            client.close()


def measure(form: str, deployment: Any, url: str, near: bool, args: argparse.Namespace) -> dict[str, Any]:
    with SimulatorServer(Simulator.demo(rate_limit=None)) as sim_server:
        sim = sim_server.sim
        store = connect(url)
        store.flushall(**({"target_nodes": "primaries"} if form == "cluster" else {}))
        store.close()
        settings = {
            "DINGTALK_API_BASE": sim_server.base_url,
            "DINGTALK_OPENAPI_BASE": sim_server.base_url,
            "REDIS_URL": url,
            "GATEWAY_SECRET_KEY": SECRET,
            "GATEWAY_NEAR_CACHE": near,
            "_corpid": DEMO_CORPID,
            "_agentid": DEMO_AGENT_ID,
        }
        app = create_app({k: v for k, v in settings.items() if not k.startswith("_")})
        get_runtime(app).registry.add(
            Corp(
                corpid=DEMO_CORPID,
                agent_id=DEMO_AGENT_ID,
                origins=("https://h5.example.com",),
                corp_secret=DEMO_CORP_SECRET,
                channel_secret=DEMO_CHANNEL_SECRET,
            )
        )
        warm = app.test_client().get(f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={quote(PAGE)}")
        assert warm.status_code == 200, warm.get_json()
        get_runtime(app).close()
        ports = _primaries(form, deployment)
        _reset(ports)
        _, rows = run_timed(
            settings=settings,
            processes=args.processes,
            kinds=["config"] * args.threads,
            seconds=args.seconds,
            pause=0.0,
        )
        commands = _commands(ports)
        ok = [r for r in rows if r["status"] == 200]
        valid = sum(bool(sim.check_config(**{**r["body"], "url": PAGE}).get("ok")) for r in ok)
        latencies = sorted((r["end"] - r["start"]) * 1000 for r in ok)
        return {
            "store": form,
            "near_cache": near,
            "requests": len(rows),
            "ok": len(ok),
            "valid_signatures": valid,
            "per_second": round(len(ok) / args.seconds, 1),
            "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 2),
            "store_commands_per_request": round(commands / max(1, len(rows)), 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="per process")
    parser.add_argument("--forms", nargs="+", default=["single", "sentinel", "cluster"])
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-stores-") as workdir:
        for form in args.forms:
            deployment: Any
            if form == "single":
                deployment = RedisServer(free_port())
            elif form == "sentinel":
                deployment = Sentinels(os.path.join(workdir, "sentinel"))
            else:
                deployment = Cluster(os.path.join(workdir, "cluster"))
            try:
                deployment.start()
                url = deployment.url
                for near in (True, False):
                    rows.append(measure(form, deployment, url, near, args))
            finally:
                deployment.stop()
    print(json.dumps({"settings": vars(args), "loadavg_at_end": os.getloadavg(), "rows": rows}, indent=2))
    print()
    print("| store | near cache | configs/s | p50 ms | p99 ms | store commands per request | valid signatures |")
    print("|---|---|---:|---:|---:|---:|---|")
    for row in rows:
        print(
            f"| {row['store']} | {'on' if row['near_cache'] else 'off'} | {row['per_second']} | {row['p50_ms']} | "
            f"{row['p99_ms']} | {row['store_commands_per_request']} | {row['valid_signatures']}/{row['ok']} |"
        )


if __name__ == "__main__":
    main()
