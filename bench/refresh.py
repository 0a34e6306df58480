"""Refresh-ahead and the concurrent cold login (issue 19): `python -m bench.refresh [steady] [cold]`.

  steady  The production stack's gunicorn on two "hosts" (2 workers x 4 threads each) sharing one Redis and one
          simulator process whose tokens and tickets live `--lifetime` seconds (20), with the gateway's margin,
          lead and pass interval scaled to match. A bounded mix of requests (configs and logins of the three
          sandbox corps: a legacy service window, an internal app, a current service window) runs for `--seconds`
          (120) once warm, first with refresh-ahead on, then off (GATEWAY_REFRESH_AHEAD=0), each on an empty Redis.
          Reported per credential: upstream fetches in the window (DingTalk's count), by whom (the gateway's
          metrics: a refresher ahead of time or a request), and the requests that found a credential missing and
          waited for its fetch; and the configs' latency, since a config calls DingTalk only when it waits.
  cold    One gateway process on a real Redis and the in-process simulator, every legacy API answering after
          `--latency` (0.1 s). Each round drops everything cached for the legacy corp (a new registration) and
          times one login of a follower with no cached link, with the corp token fetched while the code is
          exchanged and, alternating, without (the code before issue 19). Reported: wall time, upstream calls,
          and the critical path: the longest chain of calls each starting after the previous one answered.

Results go to bench/results-refresh.json; the tables are printed as Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
import requests
from prometheus_client.parser import text_string_to_metric_families

if not __package__:  # `python bench/refresh.py` as well as `python -m bench.refresh`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.report import git_state  # noqa: E402
from sandbox.app_controls import ALL_APIS as APP_APIS  # noqa: E402
from sandbox.demo import (  # noqa: E402
    DEMO_AGENT_ID,
    DEMO_APP_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_CORPID,
    DEMO_FOLLOWERS,
    DEMO_MEMBERS,
    DEMO_ORG_CORPID,
    DEMO_PEOPLE,
    DEMO_WINDOW_AGENT_ID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_CORPID,
)
from sandbox.stack import ROOT, Stack  # noqa: E402

ORIGIN = "https://h5.example.com"
PAGE = f"{ORIGIN}/bench?x=1"
EMPLOYEE = next(p for p in DEMO_PEOPLE if p["contact_type"] == 0)
FOLLOWER = next(f for f in DEMO_FOLLOWERS if f["followed"] and f["links_to"])

# Each credential the mix uses: (corpid, pipeline) -> how to count its fetches at the simulator.
CREDENTIALS: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    (DEMO_CORPID, "channel:token"): ("/_sim/calls", {"api": "channel/get_channel_token", "corpid": DEMO_CORPID}),
    (DEMO_CORPID, "channel:ticket"): (
        "/_sim/calls",
        {"api": "channel/get_channel_jsapi_ticket", "corpid": DEMO_CORPID},
    ),
    (DEMO_CORPID, "corp:token"): ("/_sim/calls", {"api": "gettoken", "corpid": DEMO_CORPID}),
    (DEMO_ORG_CORPID, "app:token"): ("/_sim/app/calls", {"api": "v1.0/oauth2/accessToken", "app_key": DEMO_APP_KEY}),
    (DEMO_ORG_CORPID, "app:ticket"): (
        "/_sim/app/calls",
        {"api": "v1.0/oauth2/jsapiTickets", "app_key": DEMO_APP_KEY},
    ),
    (DEMO_WINDOW_CORPID, "app:token"): (
        "/_sim/app/calls",
        {"api": "v1.0/oauth2/accessToken", "app_key": DEMO_WINDOW_APP_KEY},
    ),
    (DEMO_WINDOW_CORPID, "app:ticket"): (
        "/_sim/app/calls",
        {"api": "v1.0/oauth2/jsapiTickets", "app_key": DEMO_WINDOW_APP_KEY},
    ),
}

# The mix each client thread goes through: (kind, corpid, agentid or the code's subject).
STEPS = [
    ("config", DEMO_CORPID, DEMO_AGENT_ID),
    ("login", DEMO_CORPID, EMPLOYEE["unionid"]),
    ("config", DEMO_ORG_CORPID, DEMO_APP_AGENT_ID),
    ("app_login", DEMO_ORG_CORPID, DEMO_MEMBERS[0]["userid"]),
    ("config", DEMO_WINDOW_CORPID, DEMO_WINDOW_AGENT_ID),
    ("app_login", DEMO_WINDOW_CORPID, FOLLOWER["userid"]),
]
CLIENT_IDS = {DEMO_ORG_CORPID: DEMO_APP_KEY, DEMO_WINDOW_CORPID: DEMO_WINDOW_APP_KEY}


def local() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


# -- steady state ------------------------------------------------------------------------------------------------


def sim_post(api_base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with local() as session:
        resp = session.post(api_base + path, json=body, timeout=10)
        resp.raise_for_status()
        answer: dict[str, Any] = resp.json()
    if answer.get("errcode", 0) != 0:
        raise RuntimeError(f"{path}: {answer}")
    return answer


def fetch_counts(api_base: str) -> dict[tuple[str, str], int]:
    with local() as session:
        return {
            credential: int(session.get(api_base + path, params=params, timeout=10).json()["calls"])
            for credential, (path, params) in CREDENTIALS.items()
        }


def gateway_counters(stacks: list[Stack]) -> dict[str, dict[tuple[str, ...], float]]:
    """The credential counters summed over every host (each host's /metrics already sums its workers)."""
    totals: dict[str, dict[tuple[str, ...], float]] = {"waits": {}, "refreshes": {}}
    names = {"dtgw_credential_waits_total": "waits", "dtgw_credential_refreshes_total": "refreshes"}
    with local() as session:
        for stack in stacks:
            text = session.get(stack.gunicorn_url + "/metrics", timeout=10).text
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name in names:
                        labels = sample.labels
                        key = (labels["corpid"], labels["pipeline"], labels.get("path", ""))
                        bucket = totals[names[sample.name]]
                        bucket[key] = bucket.get(key, 0.0) + sample.value
    return totals


class Mix:
    """Client threads going through STEPS against the hosts in turn, `pause` seconds apart (a bounded load)."""

    def __init__(self, stacks: list[Stack], api_base: str, threads: int, pause: float) -> None:
        self.stacks = stacks
        self.api_base = api_base
        self.threads = threads
        self.pause = pause
        self.rows: list[tuple[str, int, float, float]] = []  # kind, status, start, seconds
        self._lock = threading.Lock()

    def run(self, seconds: float) -> list[tuple[str, int, float, float]]:
        self.rows = []
        deadline = time.time() + seconds
        pool = [threading.Thread(target=self._loop, args=(i, deadline)) for i in range(self.threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return self.rows

    def _loop(self, index: int, deadline: float) -> None:
        base = self.stacks[index % len(self.stacks)].gunicorn_url
        gateway, simulator = local(), local()
        step = index
        while time.time() < deadline:
            kind, corpid, subject = STEPS[step % len(STEPS)]
            step += 1
            if kind == "config":
                query = {"corpid": corpid, "agentid": subject, "url": PAGE}
                started = time.time()
                resp = gateway.get(base + "/channel/config", params=query, timeout=30)
            else:
                code = self._mint(simulator, kind, corpid, subject)
                started = time.time()
                resp = gateway.post(base + "/channel/login", json={"corpid": corpid, "code": code}, timeout=30)
            took = time.time() - started
            with self._lock:
                self.rows.append((kind, resp.status_code, started, took))
            time.sleep(self.pause)
        gateway.close()
        simulator.close()

    def _mint(self, session: requests.Session, kind: str, corpid: str, subject: str) -> str:
        if kind == "login":
            path, body = "/_client/auth_code", {"corpid": corpid, "unionid": subject}
        else:
            path, body = "/_client/app_code", {"corpid": corpid, "client_id": CLIENT_IDS[corpid], "userid": subject}
        return str(session.post(self.api_base + path, json=body, timeout=10).json()["code"])


def steady_mode(infra: Stack, args: argparse.Namespace, *, ahead: bool) -> dict[str, Any]:
    """One run of the mix on `args.hosts` fresh gunicorn hosts over an empty Redis."""
    redis.Redis.from_url(infra.redis_url or "").flushdb()
    env = {
        "GATEWAY_SANDBOX_ORIGINS": ORIGIN,  # the same registrations on every host (else each replaces the other's)
        "GATEWAY_ACCESS_LOG": os.devnull,
        "GATEWAY_TOKEN_MARGIN": str(args.margin),
        "GATEWAY_TOKEN_JITTER": str(args.jitter),
        "GATEWAY_REFRESH_AHEAD": "1" if ahead else "0",
        "GATEWAY_REFRESH_AHEAD_LEAD": str(args.lead),
        "GATEWAY_REFRESH_AHEAD_EVERY": str(args.every),
        "GATEWAY_USERID_CACHE_TTL": "1",  # every login looks its userid up: the corp and org tokens stay in use
        "GATEWAY_FOLLOW_CACHE_TTL": "1",  # and the window's follow status: its app token too
    }
    stacks = [
        Stack(
            workers=args.workers,
            threads=args.threads,
            redis_url=infra.redis_url,
            api_base=infra.api_base,
            sandbox=True,
            env=env,
        )
        for _ in range(args.hosts)
    ]
    try:
        for stack in stacks:
            stack.start_gunicorn()
        mix = Mix(stacks, infra.api_base or "", args.clients, args.pause)
        warm = mix.run(args.warm)
        fetched_before, counters_before = fetch_counts(infra.api_base or ""), gateway_counters(stacks)
        started = time.time()
        rows = mix.run(args.seconds)
        window = time.time() - started
        fetched_after, counters_after = fetch_counts(infra.api_base or ""), gateway_counters(stacks)
    finally:
        for stack in stacks:
            stack.stop()

    def delta(kind: str, key: tuple[str, ...]) -> int:
        return round(counters_after[kind].get(key, 0.0) - counters_before[kind].get(key, 0.0))

    credentials = []
    for corpid, pipeline in CREDENTIALS:
        fetched = fetched_after[(corpid, pipeline)] - fetched_before[(corpid, pipeline)]
        credentials.append(
            {
                "corpid": corpid,
                "pipeline": pipeline,
                "fetches": fetched,
                "ahead": delta("refreshes", (corpid, pipeline, "ahead")),
                "by_requests": delta("refreshes", (corpid, pipeline, "request")),
                "waits": delta("waits", (corpid, pipeline, "")),
                "per_lifetime": round(fetched * args.lifetime / window, 2),
            }
        )
    configs = sorted(took for kind, status, _, took in rows if kind == "config" and status == 200)
    return {
        "refresh_ahead": ahead,
        "window_s": round(window, 1),
        "requests": len(rows),
        "statuses": {str(s): sum(1 for r in rows if r[1] == s) for s in sorted({r[1] for r in rows})},
        "warm_requests": len(warm),
        "credentials": credentials,
        "waits": sum(c["waits"] for c in credentials),
        "config_p50_ms": round(statistics.median(configs) * 1000, 1) if configs else None,
        "config_p99_ms": round(configs[max(0, round(0.99 * len(configs)) - 1)] * 1000, 1) if configs else None,
        "config_max_ms": round(configs[-1] * 1000, 1) if configs else None,
        "configs_over_latency": sum(1 for t in configs if t >= args.latency),
    }


def bench_steady(args: argparse.Namespace) -> dict[str, Any]:
    infra = Stack(sandbox=True, simulator_rate_limit=0)
    try:
        infra.start_redis()
        infra.start_simulator()
        api_base = infra.api_base or ""
        sim_post(api_base, "/_sim/lifetime", {"seconds": args.lifetime})
        sim_post(api_base, "/_sim/latency", {"seconds": args.latency, "api": "*"})
        for api in APP_APIS:
            sim_post(api_base, "/_sim/app/latency", {"api": api, "seconds": args.latency})
        modes = [steady_mode(infra, args, ahead=True), steady_mode(infra, args, ahead=False)]
    finally:
        infra.stop()
    refresh_period = args.lifetime - args.margin - args.jitter / 2 - args.lead + args.every / 2
    return {
        "lifetime_s": args.lifetime,
        "margin_s": args.margin,
        "jitter_s": args.jitter,
        "lead_s": args.lead,
        "every_s": args.every,
        "upstream_latency_s": args.latency,
        "hosts": args.hosts,
        "workers_per_host": args.workers,
        "threads_per_worker": args.threads,
        "client_threads": args.clients,
        "pause_s": args.pause,
        # Successive refreshes of one credential are this far apart: it is due `lead` before it leaves the store
        # (lifetime - margin - jitter), and the next pass (every, jittered) finds it.
        "expected_refresh_period_s": round(refresh_period, 2),
        "modes": modes,
    }


# -- the cold login ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def call_log(sim: Any) -> Iterator[list[tuple[str, float, float]]]:
    """Record every upstream call the in-process simulator answers: (api, start, end)."""
    calls: list[tuple[str, float, float]] = []
    respond = sim.respond

    def logged(api: str, params: Any) -> Any:
        started = time.perf_counter()
        try:
            return respond(api, params)
        finally:
            calls.append((api, started, time.perf_counter()))

    sim.respond = logged
    try:
        yield calls
    finally:
        del sim.respond


def critical_path(calls: list[tuple[str, float, float]]) -> int:
    """The longest chain of calls, each starting after the previous one answered: the calls a login waited for in a
    row. (Calls that overlap were made side by side.)"""
    ordered = sorted(calls, key=lambda c: c[2])
    chain = [1] * len(ordered)
    for i, (_, start, _) in enumerate(ordered):
        for j in range(i):
            if ordered[j][2] <= start:
                chain[i] = max(chain[i], chain[j] + 1)
    return max(chain, default=0)


def bench_cold(args: argparse.Namespace) -> dict[str, Any]:
    import channel.login
    from app import create_app
    from oapi.tokens import Meanwhile, fetched_meanwhile
    from sandbox.processes import free_port
    from sandbox.redis_server import RedisServer
    from sandbox.server import SimulatorServer
    from sandbox.state import Simulator
    from web.runtime import get_runtime
    from web.sandbox import register_demo_corp

    def sequential(cache: Any) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext(Meanwhile(cache))

    variants = {"concurrent": fetched_meanwhile, "sequential": sequential}
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    redis_server = RedisServer(free_port())
    redis_server.start()
    try:
        with SimulatorServer(Simulator.demo(rate_limit=None)) as sim_server:
            sim = sim_server.sim
            app = create_app(
                {
                    "DINGTALK_API_BASE": sim_server.base_url,
                    "DINGTALK_OPENAPI_BASE": sim_server.base_url,
                    "REDIS_URL": redis_server.url,
                    "GATEWAY_SECRET_KEY": "bench-secret-key",
                    "GATEWAY_SANDBOX_ORIGINS": ORIGIN,
                    "GATEWAY_SANDBOX": True,
                }
            )
            register_demo_corp(app)
            logging.getLogger("oapi").setLevel(logging.WARNING)  # a fetch per round is the point, not news
            rt = get_runtime(app)
            client = app.test_client()
            sim.set_latency(args.latency)
            for round_ in range(args.rounds):
                for name in variants if round_ % 2 == 0 else reversed(list(variants)):
                    channel.login.fetched_meanwhile = variants[name]  # type: ignore[assignment]
                    rt.registry.add(rt.corp(DEMO_CORPID), renew=True)  # every token, ticket and link dropped
                    code = sim.mint_auth_code(DEMO_CORPID, EMPLOYEE["unionid"])
                    with call_log(sim) as calls:
                        started = time.perf_counter()
                        resp = client.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
                        took = time.perf_counter() - started
                    if resp.status_code != 200:
                        raise RuntimeError(f"cold login answered {resp.status_code}: {resp.get_json()}")
                    rows[name].append({"ms": took * 1000, "calls": len(calls), "critical_path": critical_path(calls)})
            channel.login.fetched_meanwhile = fetched_meanwhile  # type: ignore[assignment]
            rt.close()
    finally:
        redis_server.stop()
    summary = {}
    for name, runs in rows.items():
        summary[name] = {
            "rounds": len(runs),
            "p50_ms": round(statistics.median(r["ms"] for r in runs), 1),
            "max_ms": round(max(r["ms"] for r in runs), 1),
            "upstream_calls": sorted({r["calls"] for r in runs}),
            "critical_path": sorted({r["critical_path"] for r in runs}),
        }
    summary["ratio_p50"] = round(summary["concurrent"]["p50_ms"] / summary["sequential"]["p50_ms"], 3)
    return {"upstream_latency_s": args.latency, **summary}


# -- report ---------------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    out: list[str] = []
    steady = results.get("steady")
    if steady:
        out.append(
            "| refresh-ahead | credential | upstream fetches | by a refresher | by a request | fetches per lifetime "
            "| requests that waited |"
        )
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for mode in steady["modes"]:
            for c in mode["credentials"]:
                out.append(
                    f"| {'on' if mode['refresh_ahead'] else 'off'} | {c['corpid']} {c['pipeline']} | {c['fetches']} "
                    f"| {c['ahead']} | {c['by_requests']} | {c['per_lifetime']} | {c['waits']} |"
                )
        out.append("")
        out.append(
            "| refresh-ahead | window s | requests | statuses | requests that waited | config p50 ms | config p99 ms "
            "| config max ms | configs slower than one upstream call |"
        )
        out.append("|---|---:|---:|---|---:|---:|---:|---:|---:|")
        for mode in steady["modes"]:
            out.append(
                f"| {'on' if mode['refresh_ahead'] else 'off'} | {mode['window_s']} | {mode['requests']} "
                f"| {mode['statuses']} | {mode['waits']} | {mode['config_p50_ms']} | {mode['config_p99_ms']} "
                f"| {mode['config_max_ms']} | {mode['configs_over_latency']} |"
            )
        out.append("")
    cold = results.get("cold")
    if cold:
        out.append("| cold legacy login | rounds | upstream calls | critical path (calls in a row) | p50 ms | max ms |")
        out.append("|---|---:|---:|---:|---:|---:|")
        for name in ("sequential", "concurrent"):
            row = cold[name]
            calls = "/".join(str(c) for c in row["upstream_calls"])
            path = "/".join(str(c) for c in row["critical_path"])
            out.append(f"| {name} | {row['rounds']} | {calls} | {path} | {row['p50_ms']} | {row['max_ms']} |")
        out.append(f"\nconcurrent / sequential p50: {cold['ratio_p50']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.refresh", description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["steady", "cold"], help="steady cold")
    parser.add_argument("--seconds", type=float, default=120.0, help="steady window (default 120)")
    parser.add_argument("--warm", type=float, default=5.0, help="traffic before the window (default 5)")
    parser.add_argument("--lifetime", type=int, default=20, help="simulated token and ticket lifetime (default 20)")
    parser.add_argument("--margin", type=int, default=1, help="GATEWAY_TOKEN_MARGIN (default 1)")
    parser.add_argument("--jitter", type=int, default=0, help="GATEWAY_TOKEN_JITTER (default 0)")
    parser.add_argument("--lead", type=float, default=2.0, help="GATEWAY_REFRESH_AHEAD_LEAD (default 2)")
    parser.add_argument("--every", type=float, default=0.5, help="GATEWAY_REFRESH_AHEAD_EVERY (default 0.5)")
    parser.add_argument("--latency", type=float, default=0.05, help="upstream latency, steady (default 0.05)")
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per host (default 2)")
    parser.add_argument("--threads", type=int, default=4, help="gthread threads per worker (default 4)")
    parser.add_argument("--clients", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between a client's requests")
    parser.add_argument("--rounds", type=int, default=10, help="cold logins per variant (default 10)")
    parser.add_argument("--cold-latency", type=float, default=0.1, help="upstream latency, cold (default 0.1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-refresh.json")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": os.getloadavg(),
        "git": git_state(),
    }
    if "steady" in args.parts:
        results["steady"] = bench_steady(args)
    if "cold" in args.parts:
        cold_args = argparse.Namespace(**{**vars(args), "latency": args.cold_latency})
        results["cold"] = bench_cold(cold_args)
    results["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(results))
    print(f"\nload average at start {results['loadavg_at_start']}, at end {results['loadavg_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
