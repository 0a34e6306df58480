"""Traffic from several OS processes at once, each with its own copy of the gateway app, for the concurrency tests
(tests/test_concurrency.py, tests/test_rotation.py, tests/test_refresh.py) and `python -m bench.herd`.

`run_herd` releases P processes x T threads at one barrier (a thundering herd on a cold cache); `run_traffic` keeps
requests flowing while an action happens in the middle; `run_steady` keeps a mix of requests flowing for a set
time once every process is warm, and reads each process's `/metrics` on both sides of that window. Processes are
spawned, never forked from a threaded parent (the simulator serves from a thread). Each builds its app from
`factory`, a "module:function" name that is called with the settings (as gunicorn is given `app:create_app()`), so
the simulator's package imports none of the gateway's.
"""

from __future__ import annotations

import importlib
import json
import multiprocessing as mp
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

GATEWAY_FACTORY = "app:create_app"
PAGE = "https://h5.example.com/herd?x=1"


def _build_app(factory: str, settings: dict[str, Any]) -> Any:
    """Call the "module:function" factory with settings, in the process that serves with it."""
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)(settings)


def _request(client: Any, kind: str, settings: dict[str, Any], code: str) -> Any:
    """One request of the herd or the traffic: the page's config, or a login with `code`."""
    corpid, agentid = settings["_corpid"], settings.get("_agentid")
    # The client address the gateway sees (its failed-login budget is per address); the test client's default.
    environ = {"REMOTE_ADDR": settings.get("_remote_addr", "127.0.0.1")}
    if kind == "config":
        url = f"/channel/config?corpid={corpid}&agentid={agentid}&url={quote(PAGE, safe='')}"
        return client.get(url, environ_base=environ)
    return client.post("/channel/login", json={"corpid": corpid, "code": code}, environ_base=environ)


def _run_together(pool: list[threading.Thread], barrier: Any, timeout: float) -> None:
    """Start every thread once all processes are at the barrier, and wait for them."""
    barrier.wait(timeout=120)
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout)


def _worker(
    factory: str,
    index: int,
    settings: dict[str, Any],
    kind: str,
    threads: int,
    codes: list[str],
    barrier: Any,
    out: Any,
) -> None:
    """One OS process: build the app, wait for everyone, fire `threads` requests at once."""
    app = _build_app(factory, settings)
    results: list[dict[str, Any]] = [{} for _ in range(threads)]
    local = threading.Barrier(threads)

    def one(i: int) -> None:
        client = app.test_client()
        local.wait()
        started = time.time()
        resp = _request(client, kind, settings, codes[i] if kind == "login" else "")
        results[i] = {"status": resp.status_code, "body": resp.get_json(), "start": started, "end": time.time()}

    pool = [threading.Thread(target=one, args=(i,)) for i in range(threads)]
    _run_together(pool, barrier, 120)
    out.put((index, results))


def _traffic_worker(
    factory: str,
    index: int,
    settings: dict[str, Any],
    kind: str,
    threads: int,
    jobs: list[str],
    reserve: int,
    after: float,
    done: Any,
    acted: Any,
    acted_at: Any,
    barrier: Any,
    out: Any,
) -> None:
    """One OS process of traffic: `threads` threads send requests (logins with `jobs`' codes, or configs), counting
    into `done`, until the action has happened and some traffic has run past it.

    The traffic is defined by what it must contain, never by how fast a machine gets through it: a login thread
    holds back its last `reserve` codes until the action is done, and a config thread keeps going until it has
    started a request `after` seconds past the action. So a loaded machine runs longer, never a different test.
    """
    app = _build_app(factory, settings)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    chunks = [jobs[i::threads] for i in range(threads)]
    deadline = time.monotonic() + TRAFFIC_DEADLINE

    def loop(chunk: list[str]) -> None:
        client = app.test_client()

        def one(code: str) -> float:
            started = time.time()
            resp = _request(client, kind, settings, code)
            row = {"status": resp.status_code, "start": started, "end": time.time()}
            if kind == "config":
                row["body"] = resp.get_json()
            with lock:
                results.append(row)
            with done.get_lock():
                done.value += 1
            return started

        if kind == "config":
            while time.monotonic() < deadline:
                started = one("")
                if acted.is_set() and started >= acted_at.value + after:
                    return
            return
        split = max(len(chunk) - reserve, 0)
        for code in chunk[:split]:
            one(code)
        acted.wait(timeout=max(deadline - time.monotonic(), 0))
        for code in chunk[split:]:
            one(code)

    pool = [threading.Thread(target=loop, args=(chunk,)) for chunk in chunks]
    _run_together(pool, barrier, TRAFFIC_DEADLINE)
    out.put((index, results))


# A bound on how long traffic may run, however loaded the machine: a stuck run fails instead of hanging CI.
TRAFFIC_DEADLINE = 240.0


def _timed_worker(
    factory: str,
    index: int,
    settings: dict[str, Any],
    kinds: list[str],
    codes: list[str],
    pause: float,
    start_at: Any,
    seconds: float,
    barrier: Any,
    out: Any,
) -> None:
    """One OS process of timed traffic: one thread per entry of `kinds` sends that kind of request, one every
    `pause` seconds at most, from `start_at` until `seconds` later (login threads share `codes`, one per login)."""
    app = _build_app(factory, settings)
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    pending = list(reversed(codes))

    def loop(kind: str) -> None:
        client = app.test_client()
        while True:
            now = time.time()
            if now >= start_at.value + seconds:
                return
            code = ""
            if kind == "login":
                with lock:
                    if not pending:
                        return
                    code = pending.pop()
            try:
                resp = _request(client, kind, settings, code)
                row: dict[str, Any] = {"kind": kind, "status": resp.status_code, "start": now, "end": time.time()}
                row["body"] = resp.get_json(silent=True)
                if resp.status_code >= 500:
                    row["retry_after"] = resp.headers.get("Retry-After")
            except Exception as e:  # an exception through the test client is a 500 a server would have sent
                row = {"kind": kind, "status": 500, "start": now, "end": time.time(), "body": repr(e)}
            with lock:
                results.append(row)
            time.sleep(max(0.0, pause - (time.time() - now)))

    pool = [threading.Thread(target=loop, args=(kind,)) for kind in kinds]
    barrier.wait(timeout=120)
    while time.time() < start_at.value:
        time.sleep(0.001)
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + TRAFFIC_DEADLINE)
    out.put((index, results))


def run_timed(
    *,
    settings: dict[str, Any],
    processes: int,
    kinds: list[str],
    seconds: float,
    actions: Sequence[tuple[float, Callable[[], Any]]] = (),
    codes: list[str] | None = None,
    pause: float = 0.02,
    factory: str = GATEWAY_FACTORY,
    beside: Callable[[float, float], Any] | None = None,
) -> tuple[float, list[dict[str, Any]]]:
    """Traffic for a set time: `processes` processes, each with one thread per entry of `kinds` ("config",
    "login"), for `seconds` seconds; each `(at, action)` runs `at` seconds after the start, in this process, and
    `beside(start, end)` (if given) runs on a thread of this process for the whole time (say, pushes through an
    app of its own). Return the start (wall clock) and every request's kind, status, start and end times and body.

    Timed rather than counted: a fault at 10 s and a recovery bound of 15 s are about time, whatever the machine
    gets through meanwhile. `pause` paces each thread, so a loaded two-core machine is not saturated.
    """
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    start_at = ctx.Value("d", 0.0)
    codes = codes or []
    per = len(codes) // processes
    procs = [
        ctx.Process(
            target=_timed_worker,
            args=(
                factory,
                i,
                settings,
                kinds,
                codes[i * per : (i + 1) * per],
                pause,
                start_at,
                seconds,
                barrier,
                out,
            ),
            daemon=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    start_at.value = time.time() + 3600  # set once everyone is ready
    barrier.wait(timeout=120)
    start = time.time() + 0.2
    start_at.value = start
    side = None
    if beside is not None:
        side = threading.Thread(target=beside, args=(start, start + seconds))
        side.start()
    for at, action in sorted(actions, key=lambda pair: pair[0]):
        time.sleep(max(0.0, start + at - time.time()))
        action()
    results: list[dict[str, Any]] = []
    for _ in procs:
        results.extend(out.get(timeout=seconds + TRAFFIC_DEADLINE)[1])
    for p in procs:
        p.join(30)
    if side is not None:
        side.join(seconds + 60)
    return start, results


def run_traffic(
    *,
    settings: dict[str, Any],
    processes: int,
    threads: int,
    at: int,
    action: Callable[[], Any],
    kind: str = "login",
    jobs: list[str] | None = None,
    reserve: int = 5,
    after: float = 1.0,
    factory: str = GATEWAY_FACTORY,
) -> list[dict[str, Any]]:
    """Traffic from several processes; run `action` once `at` requests have finished; return every request's result
    (status, start and end times, and for configs the body).

    Guarantees, on any machine: at least `at` requests ended before the action began; after it returned, every
    login thread sends its last `reserve` codes, and every config thread starts at least one request `after`
    seconds or more past it (so requests exist on both sides of any window shorter than `after`).
    """
    jobs = jobs or []
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    done = ctx.Value("i", 0)
    acted = ctx.Event()
    acted_at = ctx.Value("d", 0.0)
    per = len(jobs) // processes
    if kind == "login":
        held = processes * threads * reserve
        if per * processes - held < at:
            raise ValueError(f"{len(jobs)} codes cannot reach {at} logins before the action with {held} held back")
    procs = [
        ctx.Process(
            target=_traffic_worker,
            args=(
                factory,
                i,
                settings,
                kind,
                threads,
                jobs[i * per : (i + 1) * per],
                reserve,
                after,
                done,
                acted,
                acted_at,
                barrier,
                out,
            ),
            daemon=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=120)
    deadline = time.monotonic() + TRAFFIC_DEADLINE
    while done.value < at and time.monotonic() < deadline:
        time.sleep(0.005)
    if done.value < at:
        raise TimeoutError(f"only {done.value} of {at} requests finished within {TRAFFIC_DEADLINE:.0f} s")
    try:
        action()
    finally:
        acted_at.value = time.time()
        acted.set()
    results: list[dict[str, Any]] = []
    for _ in procs:
        results.extend(out.get(timeout=TRAFFIC_DEADLINE + 60)[1])
    for p in procs:
        p.join(30)
    return results


def run_herd(
    *,
    base_url: str,
    redis_url: str,
    secret_key: str,
    corpid: str,
    agentid: str,
    processes: int,
    threads: int,
    kind: str = "config",
    codes: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    factory: str = GATEWAY_FACTORY,
) -> list[dict[str, Any]]:
    """Run the herd; return every request's status, body and wall-clock start/end."""
    settings: dict[str, Any] = {
        "DINGTALK_API_BASE": base_url,
        "DINGTALK_OPENAPI_BASE": base_url,  # the simulator serves both API generations
        "REDIS_URL": redis_url,
        "GATEWAY_SECRET_KEY": secret_key,
        "GATEWAY_TOKEN_JITTER": 0,
        "_corpid": corpid,
        "_agentid": agentid,
        **(extra or {}),
    }
    ctx = mp.get_context("spawn")  # no fork of a threaded parent (the simulator serves from a thread)
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    codes = codes or []
    procs = [
        ctx.Process(
            target=_worker,
            args=(factory, i, settings, kind, threads, codes[i * threads : (i + 1) * threads], barrier, out),
            daemon=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    results: list[dict[str, Any]] = []
    for _ in procs:
        _, chunk = out.get(timeout=180)
        results.extend(chunk)
    for p in procs:
        p.join(30)
    return results


# -- steady traffic ---------------------------------------------------------------------------------------------------


def _mint(api_base: str, step: dict[str, str]) -> str:
    """A fresh single-use code from the simulator's client side, for a login step."""
    if step["kind"] == "login":
        path, body = "/_client/auth_code", {"corpid": step["corpid"], "unionid": step["unionid"]}
    else:
        path = "/_client/app_code"
        body = {"corpid": step["corpid"], "client_id": step["client_id"], "userid": step["userid"]}
    req = urllib.request.Request(
        api_base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 (the loopback simulator)
        return str(json.load(resp)["code"])


def _step(client: Any, api_base: str, step: dict[str, str]) -> Any:
    """One request of a steady mix: a page's config, or a login with a code minted for it."""
    if step["kind"] == "config":
        query = f"corpid={step['corpid']}&agentid={step['agentid']}&url={quote(PAGE, safe='')}"
        return client.get(f"/channel/config?{query}")
    return client.post("/channel/login", json={"corpid": step["corpid"], "code": _mint(api_base, step)})


def _steady_worker(
    factory: str,
    index: int,
    settings: dict[str, Any],
    steps: list[dict[str, str]],
    threads: int,
    seconds: float,
    pause: float,
    barrier: Any,
    out: Any,
) -> None:
    """One OS process: build the app, warm it (every step once), wait for every process, read /metrics, run the
    mix on `threads` threads for `seconds`, read /metrics again."""
    app = _build_app(factory, settings)
    api_base = settings["DINGTALK_API_BASE"]
    warm = [{"step": s["kind"], "status": _step(app.test_client(), api_base, s).status_code} for s in steps]
    barrier.wait(timeout=120)
    probe = app.test_client()
    before = probe.get("/metrics").get_data(as_text=True)
    started = time.time()
    results: list[dict[str, Any]] = []
    lock = threading.Lock()

    def loop(offset: int) -> None:
        client = app.test_client()
        i = offset
        while time.time() < started + seconds:
            step = steps[i % len(steps)]
            i += 1
            t0 = time.time()
            resp = _step(client, api_base, step)
            with lock:
                results.append({"step": step["kind"], "status": resp.status_code, "start": t0, "end": time.time()})
            time.sleep(pause)

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(seconds + TRAFFIC_DEADLINE)
    ended = time.time()
    after = probe.get("/metrics").get_data(as_text=True)
    out.put((index, {"warm": warm, "results": results, "metrics": (before, after), "window": (started, ended)}))


def run_steady(
    *,
    settings: dict[str, Any],
    processes: int,
    threads: int,
    steps: list[dict[str, str]],
    seconds: float,
    pause: float = 0.05,
    factory: str = GATEWAY_FACTORY,
) -> list[dict[str, Any]]:
    """Steady traffic from several processes for `seconds`, once each has sent every step once (warm).

    A step is `{"kind": "config", "corpid", "agentid"}`, `{"kind": "login", "corpid", "unionid"}` (a legacy
    follower's code) or `{"kind": "app_login", "corpid", "client_id", "userid"}` (a current app's code); each thread
    goes through them in turn, `pause` seconds apart, so the load stays bounded on a small machine. Returns per
    process: the warm-up's statuses, every request of the window, the process's `/metrics` text before and after
    the window, and the window's wall-clock start and end.
    """
    ctx = mp.get_context("spawn")  # no fork of a threaded parent (the simulator serves from a thread)
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    procs = [
        ctx.Process(
            target=_steady_worker,
            args=(factory, i, settings, steps, threads, seconds, pause, barrier, out),
            daemon=True,
        )
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=seconds + TRAFFIC_DEADLINE + 60) for _ in procs]
    for p in procs:
        p.join(30)
    return [report for _, report in sorted(reports, key=lambda r: r[0])]
