"""Thundering herd on a cold cache: P processes x T threads ask for the same corp's config at once.

The herd itself is sandbox/traffic.py's `run_herd`, which the concurrency tests (tests/test_concurrency.py) run
too; this is its benchmark:

    python -m bench.herd --processes 4 --threads 32 [--ticket-mode invalidate|renew] [--latency 0.05]

It starts a real redis-server and the simulator itself, prints upstream fetches per pipeline and the time to
the first and last response.
"""

from __future__ import annotations

import argparse
import json

import redis

from app import create_app
from corp.registry import Corp
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID
from sandbox.processes import free_port
from sandbox.redis_server import RedisServer
from sandbox.server import SimulatorServer
from sandbox.state import Simulator
from sandbox.traffic import PAGE, run_herd
from web.runtime import get_runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--ticket-mode", choices=["invalidate", "renew"], default="invalidate")
    parser.add_argument("--latency", type=float, default=0.05, help="simulated upstream latency (s)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    redis_server = RedisServer(free_port())
    redis_server.start()
    rows = []
    try:
        for _ in range(args.rounds):
            redis.Redis.from_url(redis_server.url).flushdb()
            with SimulatorServer(Simulator.demo(rate_limit=None)) as sim_server:
                sim = sim_server.sim
                sim.set_ticket_mode(DEMO_CORPID, args.ticket_mode)
                sim.set_latency(args.latency)
                app = create_app(
                    {
                        "DINGTALK_API_BASE": sim_server.base_url,
                        "REDIS_URL": redis_server.url,
                        "GATEWAY_SECRET_KEY": "bench-secret-key",
                    }
                )
                get_runtime(app).registry.add(
                    Corp(
                        corpid=DEMO_CORPID,
                        agent_id=DEMO_AGENT_ID,
                        origins=("https://h5.example.com",),
                        corp_secret=DEMO_CORP_SECRET,
                        channel_secret=DEMO_CHANNEL_SECRET,
                    )
                )
                results = run_herd(
                    base_url=sim_server.base_url,
                    redis_url=redis_server.url,
                    secret_key="bench-secret-key",
                    corpid=DEMO_CORPID,
                    agentid=DEMO_AGENT_ID,
                    processes=args.processes,
                    threads=args.threads,
                )
                t0 = min(r["start"] for r in results)
                valid = sum(
                    sim.check_config(**{**r["body"], "url": PAGE}).get("ok", False)
                    for r in results
                    if r["status"] == 200
                )
                rows.append(
                    {
                        "requests": len(results),
                        "ok": sum(r["status"] == 200 for r in results),
                        "valid_signatures": valid,
                        "channel_token_fetches": sim.calls("channel/get_channel_token"),
                        "ticket_fetches": sim.calls("channel/get_channel_jsapi_ticket"),
                        "first_ms": round((min(r["end"] for r in results) - t0) * 1000, 1),
                        "last_ms": round((max(r["end"] for r in results) - t0) * 1000, 1),
                    }
                )
    finally:
        redis_server.stop()
    print(
        json.dumps(
            {
                "processes": args.processes,
                "threads": args.threads,
                "ticket_mode": args.ticket_mode,
                "latency_s": args.latency,
                "rounds": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
