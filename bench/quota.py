"""Upstream quota benchmarks (issue 19): `python -m bench.quota [burst] [junk] [--before]`.

Both run the production stack (sandbox/stack.py: nginx with its per-IP limits lifted, gunicorn, one Redis) against
one simulator process with DingTalk's limit on: 20 calls per second per corp and API, 90018 beyond.

burst  200 returning-follower logins for one corp, started within 2 s (open loop, one client each). A client
       that gets 503 waits its Retry-After and sends the same code again (the code is unspent: a refusal happens
       before anything reaches DingTalk), for at most 60 s. Reported: success %, 90018s DingTalk answered, login
       latency p50/p99 (first send to success), time until the last success, the busiest second DingTalk saw; and
       GET /channel/config p99 from a closed loop of page views while the burst runs, against the same loop idle.
junk   60 made-up codes from 3 client addresses (127.0.0.2-4, 20 each, sent at once per address) while real
       followers sign in from other addresses (24 during, 12 after): real-login success % during and after, 90018s,
       what reached DingTalk, and whether the real attempts are still in the support trace.

`--before` runs each part a second time, in the same run, with pacing and the failed-login budget off
(GATEWAY_UPSTREAM_RATE=0, GATEWAY_JUNK_ADDRESS_BUDGET=0): the gateway's behaviour before issue 19. Prints JSON
lines and a Markdown table; writes bench/quota-results.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import secrets
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any

if not __package__:  # `python bench/quota.py` as well as `python -m bench.quota`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import redis  # noqa: E402

from bench.report import git_state  # noqa: E402
from bench.workload import config_request, local, start_stack  # noqa: E402
from sandbox.demo import DEMO_CORPID, DEMO_PEOPLE  # noqa: E402
from sandbox.stack import ROOT, Stack  # noqa: E402

API = "channel/user/get_by_code"
LINKED = [p for p in DEMO_PEOPLE if p["userid"]]
BEFORE = {"GATEWAY_UPSTREAM_RATE": "0", "GATEWAY_JUNK_ADDRESS_BUDGET": "0"}
GIVE_UP = 60.0  # seconds after its first try a client stops retrying (none did with pacing on)


def connect(base: str, source: str | None = None) -> http.client.HTTPConnection:
    """A keep-alive connection to nginx (self-signed TLS), from `source` (a loopback address) if given."""
    host, port = base.removeprefix("https://").split(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    bind = (source, 0) if source else None
    return http.client.HTTPSConnection(host, int(port), timeout=60, context=context, source_address=bind)


def post_login(conn: http.client.HTTPConnection, code: str) -> tuple[int, dict[str, Any], str | None]:
    body = json.dumps({"corpid": DEMO_CORPID, "code": code})
    conn.request("POST", "/channel/login", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = {}
    return resp.status, parsed, resp.getheader("Retry-After")


def mint(api_base: str, unionid: str) -> str:
    with local() as session:
        body = {"corpid": DEMO_CORPID, "unionid": unionid}
        return str(session.post(f"{api_base}/_client/auth_code", json=body).json()["code"])


def sim_arrivals(api_base: str) -> dict[str, Any]:
    with local() as session:
        return dict(session.get(f"{api_base}/_sim/arrivals", params={"api": API}).json())


def reset_sim(api_base: str) -> None:
    with local() as session:
        session.post(f"{api_base}/_sim/reset_calls", json={}).raise_for_status()


def rate_limited(gunicorn_url: str) -> int:
    """90018s the gateway got from DingTalk for the code exchange (its /metrics, summed over workers)."""
    text = local().get(f"{gunicorn_url}/metrics").text
    pattern = rf'^dtgw_upstream_calls_total\{{api="{re.escape(API)}",errcode="90018"\}} (\S+)$'
    return int(sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE)))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _page_views(base: str, request: Any, threads: int, stop: Any, out: Any) -> None:
    """A child process: `threads` keep-alive clients send GET /channel/config in a closed loop until `stop`."""
    method, path, _, headers = request
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def loop() -> None:
        conn = connect(base)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                conn.request(method, path, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn.close()
                conn = connect(base)
                continue
            took = (time.perf_counter() - started) * 1000
            with lock:
                if resp.status == 200:
                    latencies.append(took)
                else:
                    errors[0] += 1
            time.sleep(0.01)  # a page view every 10 ms per client: load, not saturation

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put((latencies, errors[0]))


class PageViews:
    """Page views from a process of their own (so the burst's client threads do not delay their measurement), for
    as long as the block runs; latencies in ms."""

    def __init__(self, stack: Stack, threads: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self._stop, self._out = ctx.Event(), ctx.Queue()
        self._proc = ctx.Process(
            target=_page_views, args=(stack.public_url, config_request(stack), threads, self._stop, self._out)
        )
        self.latencies: list[float] = []
        self.errors = 0

    def __enter__(self) -> PageViews:
        self._proc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.latencies, self.errors = self._out.get(timeout=120)
        self._proc.join(30)

    def summary(self) -> dict[str, Any]:
        return {
            "requests": len(self.latencies),
            "errors": self.errors,
            "p50_ms": round(percentile(self.latencies, 50), 1),
            "p99_ms": round(percentile(self.latencies, 99), 1),
        }


def warm(stack: Stack) -> None:
    """Tokens and ticket fetched, every linked person's userid cached, connections open."""
    conn = connect(stack.public_url)
    for person in LINKED:
        status, _, _ = post_login(conn, mint(stack.api_base or "", person["unionid"]))
        assert status == 200, status
    with PageViews(stack, 2):
        time.sleep(1)
    time.sleep(1.5)  # the warm-up's calls leave DingTalk's one-second window


def bench_burst(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    api_base = stack.api_base or ""
    warm(stack)
    with PageViews(stack, args.page_clients) as idle:
        time.sleep(args.idle_seconds)
    codes = [mint(api_base, LINKED[i % len(LINKED)]["unionid"]) for i in range(args.logins)]
    reset_sim(api_base)
    limited_before = rate_limited(stack.gunicorn_url)
    rows: list[dict[str, Any]] = [{} for _ in codes]

    def one(i: int, start_at: float) -> None:
        conn = connect(stack.public_url, f"127.0.{1 + i // 250}.{1 + i % 250}")  # one address per follower
        # The TLS handshake before the burst: 200 of them at once would measure this process's and nginx's CPU on
        # the 2 cores, not the gateway's workers and threads, which is what the page views are to show.
        conn.connect()
        time.sleep(max(0.0, start_at - time.perf_counter()))
        sent = time.perf_counter()
        row: dict[str, Any] = {"sent": sent, "tries": 0, "refused": 0}
        while True:
            row["tries"] += 1
            try:
                status, _, retry_after = post_login(conn, codes[i])
            except (OSError, http.client.HTTPException):  # nginx closed the idle keep-alive (30 s): reconnect
                conn.close()
                conn = connect(stack.public_url, f"127.0.{1 + i // 250}.{1 + i % 250}")
                status, _, retry_after = post_login(conn, codes[i])
            row["status"] = status
            pause = float(retry_after or 1)
            if status != 503 or time.perf_counter() + pause - sent > GIVE_UP:
                break
            row["refused"] += 1
            time.sleep(pause)
        row["done"] = time.perf_counter()
        rows[i] = row
        conn.close()

    t0 = time.perf_counter() + 5  # after every client's handshake
    spread = args.spread / args.logins
    clients = [threading.Thread(target=one, args=(i, t0 + i * spread)) for i in range(args.logins)]
    for t in clients:
        t.start()
    time.sleep(max(0.0, t0 - 0.2 - time.perf_counter()))  # the handshakes are done
    with PageViews(stack, args.page_clients) as during:
        for t in clients:
            t.join(300)
    ok = [r for r in rows if r.get("status") == 200]
    latencies = [(r["done"] - r["sent"]) * 1000 for r in ok]
    arrivals = sim_arrivals(api_base)
    result = {
        "logins": args.logins,
        "spread_s": args.spread,
        "success_pct": round(100 * len(ok) / len(rows), 1),
        "statuses": {
            str(s): sum(r.get("status") == s for r in rows) for s in sorted({r.get("status") for r in rows}, key=str)
        },
        "refused_503_first_try": sum(r["refused"] > 0 for r in rows),
        "max_503_per_login": max(r["refused"] for r in rows),
        "dingtalk_90018": rate_limited(stack.gunicorn_url) - limited_before,
        "code_exchanges_at_dingtalk": len(arrivals["arrivals"]),
        "busiest_second_at_dingtalk": arrivals["busiest_second"],
        "login_p50_ms": round(percentile(latencies, 50)),
        "login_p99_ms": round(percentile(latencies, 99)),
        "last_success_s": round(max(r["done"] for r in ok) - t0, 2) if ok else None,
        "config_idle": idle.summary(),
        "config_during": during.summary(),
    }
    result["config_p99_ratio"] = round(result["config_during"]["p99_ms"] / result["config_idle"]["p99_ms"], 2)
    return result


def bench_junk(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """60 junk codes from 3 addresses, interleaved with real logins (24 during, 12 after)."""
    api_base = stack.api_base or ""
    warm(stack)
    reset_sim(api_base)
    limited_before = rate_limited(stack.gunicorn_url)
    junkers = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    real_during = [mint(api_base, LINKED[i % len(LINKED)]["unionid"]) for i in range(24)]
    real_after = [mint(api_base, LINKED[i % len(LINKED)]["unionid"]) for i in range(12)]
    outcomes: dict[str, list[int]] = {"during": [], "after": [], "junk": []}
    lock = threading.Lock()

    def send(kind: str, code: str, source: str, at: float) -> None:
        time.sleep(max(0.0, at - time.perf_counter()))
        conn = connect(stack.public_url, source)
        status, _, _ = post_login(conn, code)
        conn.close()
        with lock:
            outcomes[kind].append(status)

    t0 = time.perf_counter() + 0.5
    plan: list[tuple[str, str, str, float]] = []
    # The junk: each address fires 20 made-up codes in a burst of 0.5 s, the three one second apart.
    for a, source in enumerate(junkers):
        plan += [("junk", secrets.token_hex(16), source, t0 + a + j * 0.025) for j in range(20)]
    # Real followers, each from an address of their own: 24 over the 6 s of junk and its aftermath, then 12 more.
    plan += [("during", code, f"127.0.2.{1 + i}", t0 + i * 0.25) for i, code in enumerate(real_during)]
    plan += [("after", code, f"127.0.3.{1 + i}", t0 + 8 + i * 0.25) for i, code in enumerate(real_after)]
    threads = [threading.Thread(target=send, args=p) for p in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    arrivals = sim_arrivals(api_base)
    trace = (
        local()
        .get(
            f"{stack.gunicorn_url}/support/api/corps/{DEMO_CORPID}/trace?count=500",
            headers={"Authorization": f"Bearer {args.admin_token}"},
        )
        .json()
    )
    logins = [e for e in trace["entries"] if e.get("kind") == "login" and e.get("outcome") == "linked"]
    junk_entries = [e for e in trace["entries"] if e.get("kind") == "junk"]
    real_ok = sum(s == 200 for s in outcomes["during"] + outcomes["after"])

    def pct(kind: str) -> float:
        return round(100 * sum(s == 200 for s in outcomes[kind]) / len(outcomes[kind]), 1)

    return {
        "real_during_pct": pct("during"),
        "real_after_pct": pct("after"),
        "real_statuses": {
            k: {str(s): outcomes[k].count(s) for s in sorted(set(outcomes[k]))} for k in ("during", "after")
        },
        "junk_statuses": {str(s): outcomes["junk"].count(s) for s in sorted(set(outcomes["junk"]))},
        "code_exchanges_at_dingtalk": len(arrivals["arrivals"]),
        "dingtalk_90018": rate_limited(stack.gunicorn_url) - limited_before,
        "busiest_second_at_dingtalk": arrivals["busiest_second"],
        # The warm-up signed each linked person in once; the rest are the benchmark's.
        "real_successes_in_trace": f"{len(logins) - len(LINKED)} of {real_ok}",
        "junk_trace_entries": len(junk_entries),
        "trace_entries_total": len(trace["entries"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quota", description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", default=["burst", "junk"], help="burst junk")
    parser.add_argument("--before", action="store_true", help="also run each part with pacing and budget off")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, help="gthread threads per worker (default: gunicorn.conf.py's, 64)")
    parser.add_argument("--logins", type=int, default=200)
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which the burst starts")
    parser.add_argument("--page-clients", type=int, default=2, help="closed-loop page-view clients")
    parser.add_argument("--idle-seconds", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quota-results.json")
    args = parser.parse_args(argv)
    args.admin_token = secrets.token_urlsafe(24)

    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_at_start": os.getloadavg(),
        "git": git_state(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "admin_token")},
    }
    infra = Stack(sandbox=True, simulator_rate_limit=20)
    try:
        infra.start_redis()
        infra.start_simulator()
        for variant, env in (("after", {}), ("before", BEFORE)):
            if variant == "before" and not args.before:
                continue
            for part in args.parts:
                redis.Redis.from_url(infra.redis_url or "").flushdb()  # each part's trace and budgets its own
                stack = start_stack(
                    infra, args.workers, args.threads, env={**env, "GATEWAY_ADMIN_TOKEN": args.admin_token}
                )
                try:
                    local().post(f"{infra.api_base}/_sim/reset_calls", json={})
                    row = (bench_burst if part == "burst" else bench_junk)(stack, args)
                finally:
                    stack.stop()
                results[f"{part}_{variant}"] = row
                print(json.dumps({"part": part, "variant": variant, **row}), flush=True)
                time.sleep(2)
    finally:
        infra.stop()
    results["loadavg_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nload average at start {results['loadavg_at_start']}, at end {results['loadavg_at_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
