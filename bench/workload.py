"""What the benchmarks start and send: the stack scripts/serve runs (with nginx's per-IP rate limits lifted), the
requests, single-use login codes from the simulator, and what they read back (CPU time, the gateway's /metrics)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import requests

from bench import loadgen
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID, DEMO_PEOPLE
from sandbox.processes import free_port
from sandbox.stack import Stack

EMPLOYEE_UNIONID = next(p["unionid"] for p in DEMO_PEOPLE if p["contact_type"] == 0)


def lift_rate_limits(conf: str) -> str:
    """Drop the per-IP limit_req lines: every benchmark request comes from one loopback address."""
    return re.sub(r"^\s*limit_req zone=.*$", "", conf, flags=re.MULTILINE)


def local() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def page_url(stack: Stack) -> str:
    return f"{stack.public_url}/channel/login?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}"


def config_request(stack: Stack) -> loadgen.Request:
    return ("GET", f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}", None, {"Referer": page_url(stack)})


def bare_request(stack: Stack) -> loadgen.Request:
    """The same request as config_request (query, Referer), to the bare endpoint: only the work behind differs."""
    method, path, body, headers = config_request(stack)
    return method, path.replace("/channel/config", "/bare", 1), body, headers


def mint_codes(api_base: str, count: int) -> list[str]:
    """Single-use auth codes for the demo employee, minted before a timed loop."""
    body = {"corpid": DEMO_CORPID, "unionid": EMPLOYEE_UNIONID}
    with local() as session:
        return [session.post(f"{api_base}/_client/auth_code", json=body).json()["code"] for _ in range(count)]


def login_requests(codes: list[str]) -> list[loadgen.Request]:
    return [("POST", "/channel/login", {"corpid": DEMO_CORPID, "code": code}, {}) for code in codes]


def set_latency(api_base: str, seconds: float) -> None:
    with local() as session:
        session.post(f"{api_base}/_sim/latency", json={"seconds": seconds, "api": "*"}).raise_for_status()


def warm_up(stack: Stack, base: str) -> None:
    """Fetch tokens and the ticket, fill the unionid cache, open pools, in every worker (enough requests)."""
    loadgen.run(base, loadgen.repeat(config_request(stack), 200), seconds=5, processes=1, threads=4)
    loadgen.run(base, login_requests(mint_codes(stack.api_base, 40)), seconds=5, processes=1, threads=4)


def start_stack(infra: Stack, workers: int, threads: int | None, **kw: Any) -> Stack:
    stack = Stack(
        workers=workers,
        threads=threads,
        https_port=free_port(),
        redis_url=infra.redis_url,
        api_base=infra.api_base,
        conf_filter=lift_rate_limits,
        **kw,
    )
    return stack.start()


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


def pids_of(stack: Stack, *names: str) -> list[int]:
    return [proc.pid for name, proc in stack.procs if name in names]


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
