"""The README's commands, run as written: in bash, from the repository root, in a newcomer's shell.

A newcomer's shell has not activated `.venv` and its `python3` may lack the project's dependencies, so the commands
run with `.venv/bin` off PATH and none of the gateway's variables set. "Registering a corp" runs against a real
Redis and the simulator; "Production" (`scripts/serve --sandbox --workers 2`) starts the whole stack on the
README's ports, answers over https, and leaves nothing behind when stopped. The README's first command
(`scripts/sandbox`) starts a server in the foreground, so the tests run only its install step, `scripts/bootstrap`.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from corp.registry import INDEX, CorpRegistry
from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_APP_KEY,
    DEMO_APP_SECRET,
    DEMO_CORPID,
    DEMO_ORG_CORPID,
    DEMO_WINDOW_APP_KEY,
    DEMO_WINDOW_APP_SECRET,
    DEMO_WINDOW_CORPID,
)
from sandbox.processes import free_port
from sandbox.server import SimulatorServer
from tests.helpers import CI

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
VENV = ROOT / ".venv"
# The gateway's own variables: a newcomer's shell has none of them, whatever the test run has (tests/test_nginx.py
# runs gunicorn.conf.py in the test process, which sets PROMETHEUS_MULTIPROC_DIR).
GATEWAY_VARIABLES = re.compile(
    r"^(GATEWAY_|REDIS_|DINGTALK_|FLASK_|PROMETHEUS_MULTIPROC_DIR$|VIRTUAL_ENV$|PYTHONHOME$|PYTHONPATH$)"
)


def section(title: str) -> str:
    """The README's text under `## title`, up to the next `## ` heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def registering_block() -> str:
    """The sh block of "Registering a corp"."""
    match = re.search(r"^```sh\n(.*?)^```$", section("Registering a corp"), re.S | re.M)
    assert match, "'Registering a corp' has no ```sh block"
    return match.group(1)


def kinds_block() -> str:
    """The sh block of "Choosing a kind of login app"."""
    match = re.search(r"^```sh\n(.*?)^```$", section("Choosing a kind of login app"), re.S | re.M)
    assert match, "'Choosing a kind of login app' has no ```sh block"
    return match.group(1)


def production_command() -> str:
    """The `scripts/serve …` command that opens "Production"."""
    match = re.search(r"`(scripts/serve [^`]*)`", section("Production"))
    assert match, "'Production' names no `scripts/serve …` command"
    return match.group(1)


def newcomer_env(**extra: str) -> dict[str, str]:
    """This process's environment as a fresh shell would have it: no .venv on PATH, no gateway variables."""
    env = {name: value for name, value in os.environ.items() if not GATEWAY_VARIABLES.match(name)}
    venv_bin = str(VENV / "bin")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != venv_bin)
    env.update(extra)
    return env


def need(*programs: str) -> None:
    """Skip without these programs, except under CI=true, where that is a failure."""
    missing = [p for p in programs if not (shutil.which(p) or os.path.exists(f"/usr/sbin/{p}"))]
    if missing:
        if CI:
            pytest.fail(f"CI=true but {', '.join(missing)} missing: .ci/run must install them")
        pytest.skip(f"needs {', '.join(missing)}")


def group_alive(pgid: int) -> bool:
    """Whether any process of the process group is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def serve_pid(shell: subprocess.Popen[bytes]) -> int:
    """The pid running scripts/serve: bash's own, when it execs a lone command (it does), else its child's."""
    if any(arg.endswith("scripts/serve") for arg in cmdline(shell.pid)):
        return shell.pid
    children = Path(f"/proc/{shell.pid}/task/{shell.pid}/children").read_text().split()
    return next(int(c) for c in children if any(arg.endswith("scripts/serve") for arg in cmdline(int(c))))


@pytest.fixture(scope="module")
def installed() -> None:
    """What the README's first command does before it serves: install the project into .venv."""
    result = subprocess.run(
        ["bash", "-c", "scripts/bootstrap"], cwd=ROOT, env=newcomer_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def readme_ports() -> Iterator[None]:
    """The README's fixed ports (8443, 8080): one test at a time on this machine, and refuse when taken."""
    with open("/tmp/dtgw-readme-serve.lock", "w") as lock:
        deadline = time.monotonic() + 300
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, "another run of this test held the README's ports for 300 s"
                time.sleep(0.5)
        for port in (8443, 8080):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    pytest.fail(f"port {port} is taken: the README's `scripts/serve` command needs it")
        yield


# ---- Registering a corp -----------------------------------------------------------------------------------------


@pytest.mark.redis
def test_registering_a_corp_block_runs_as_written(
    installed: None, real_redis: redis.Redis, redis_url: str, sim_server: SimulatorServer
) -> None:
    block = registering_block()
    assert "flask --app app corp add" in block and "corp remove" in block
    # Where the block's Redis and simulator are on this machine; everything else is the README's.
    env = newcomer_env(REDIS_URL=redis_url, DINGTALK_API_BASE=sim_server.base_url)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"

    assert f"Registered corp {DEMO_CORPID}" in out
    listed = [line for line in out.splitlines() if line.startswith(f"{DEMO_CORPID} ")]
    assert listed and f"agent={DEMO_AGENT_ID}" in listed[0] and "https://h5.example.com" in listed[0]
    # The self-test reached the simulator and passed for both credentials.
    assert re.search(r"^ok\b.*\bcorp\b", out, re.M | re.I), out
    assert re.search(r"^ok\b.*\bchannel\b", out, re.M | re.I), out
    assert "FAIL" not in out
    assert sim_server.sim.calls("gettoken", DEMO_CORPID) >= 1
    assert f"Removed corp {DEMO_CORPID}" in out
    # Secrets never printed; and the block leaves nothing registered.
    assert "Xq7vR2mK9pLw4sTz8nBc3dFh6jYe1uGa5oNi0kWx" not in listed[0]
    assert not real_redis.exists(CorpRegistry.key(DEMO_CORPID))
    assert DEMO_CORPID not in real_redis.smembers(INDEX)


@pytest.mark.redis
def test_choosing_a_kind_block_runs_as_written(
    installed: None, real_redis: redis.Redis, redis_url: str, sim_server: SimulatorServer
) -> None:
    block = kinds_block()
    assert "--kind internal" in block and "--kind service-window" in block
    # Where the block's Redis and simulator are on this machine; everything else (DINGTALK_OPENAPI_BASE included)
    # is the README's.
    env = newcomer_env(REDIS_URL=redis_url, DINGTALK_API_BASE=sim_server.base_url)
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert f"Registered corp {DEMO_ORG_CORPID} (kind internal" in out
    assert f"Registered corp {DEMO_WINDOW_CORPID} (kind service-window" in out
    assert re.search(rf"^{DEMO_WINDOW_CORPID} .*kind=service-window.*map_via={DEMO_ORG_CORPID}", out, re.M), out
    # Both self-tests reached the simulator's current-generation API and passed.
    assert "FAIL" not in out, out
    assert sim_server.sim.app_controls.calls("v1.0/oauth2/accessToken", DEMO_APP_KEY) >= 1
    assert sim_server.sim.app_controls.calls("v1.0/oauth2/accessToken", DEMO_WINDOW_APP_KEY) >= 1
    for secret in (DEMO_APP_SECRET, DEMO_WINDOW_APP_SECRET):
        assert secret not in out
    assert not real_redis.exists(CorpRegistry.key(DEMO_ORG_CORPID))
    assert not real_redis.exists(CorpRegistry.key(DEMO_WINDOW_CORPID))


# ---- Production -------------------------------------------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.nginx
def test_production_command_serves_over_https_and_stops_cleanly(
    installed: None, readme_ports: None, tmp_path: Path
) -> None:
    need("redis-server", "nginx", "openssl")
    command = production_command()
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        shell = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env=newcomer_env(), stdout=out, stderr=err, start_new_session=True
        )
    pgid = shell.pid

    def output() -> str:
        return out_path.read_text() + "\n--- stderr ---\n" + err_path.read_text()

    try:
        deadline = time.monotonic() + 120
        while "\nlogs " not in "\n" + out_path.read_text():
            assert shell.poll() is None, f"`{command}` exited with {shell.returncode}:\n{output()}"
            assert time.monotonic() < deadline, f"`{command}` did not come up within 120 s:\n{output()}"
            time.sleep(0.2)
        printed = out_path.read_text()
        public = re.search(r"^gateway\s+(https://\S+?)/?\s", printed, re.M)
        page = re.search(r"^page\s+(\S+)", printed, re.M)
        logs = re.search(r"^logs\s+(\S+)", printed, re.M)
        assert public and page and logs, printed
        assert public.group(1) == "https://127.0.0.1:8443"  # what the README says
        workdir = Path(logs.group(1)).parent

        # It runs in the project's environment, not the shell's python3.
        pid = serve_pid(shell)
        assert cmdline(pid)[0] == str(VENV / "bin" / "python"), cmdline(pid)

        with requests.Session() as https:
            https.trust_env = False
            https.verify = str(workdir / "cert.pem")  # the stack's throwaway self-signed certificate
            health = https.get(f"{public.group(1)}/healthz", timeout=10)
            assert health.status_code == 200, health.text
            assert health.json()["status"] == "ok" and health.json()["sandbox"] is True
            assert health.headers["X-Request-Id"]  # answered by the app behind nginx
            assert https.get(page.group(1), timeout=10).status_code == 200

        # `kill PID`, as the README says: the script itself stops every child and removes its work dir.
        os.kill(pid, signal.SIGTERM)
        assert shell.wait(timeout=60) == 0, output()
        assert wait_group_gone(pgid, 15), "children of scripts/serve are left running"
        assert not workdir.exists()
    finally:
        if shell.poll() is None or group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            shell.wait(timeout=10)


@pytest.mark.redis
def test_serve_shows_a_failed_childs_log_and_keeps_it(installed: None, redis_url: str, tmp_path: Path) -> None:
    """A gunicorn that cannot boot: the reason from its log is on the terminal, without --verbose."""
    env = newcomer_env(
        GATEWAY_SECRET_KEY="example-only-not-a-secret",
        REDIS_URL=redis_url,
        GATEWAY_HTTP_TIMEOUT="soon",  # every worker's create_app() refuses it
    )
    command = f"scripts/serve --workers 1 --port {free_port()} --http-port {free_port()}"
    shell = subprocess.Popen(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = shell.communicate(timeout=120)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(timeout=10)
    assert shell.returncode == 1, stdout + stderr
    assert "gunicorn exited" in stderr
    assert "GATEWAY_HTTP_TIMEOUT='soon' is not a valid value" in stderr, stderr
    assert "Traceback" not in stderr.split("--- last", 1)[0]  # a report, not the script's own traceback
    kept = re.search(r"^logs kept in (\S+)$", stderr, re.M)
    assert kept, stderr
    logs = Path(kept.group(1))
    try:
        assert "GATEWAY_HTTP_TIMEOUT" in (logs / "gunicorn.log").read_text()
    finally:
        shutil.rmtree(logs.parent, ignore_errors=True)
    assert wait_group_gone(shell.pid, 15), "children of scripts/serve are left running"


@pytest.mark.redis
@pytest.mark.nginx
def test_serve_reports_a_child_that_dies_later_and_keeps_its_log(installed: None, tmp_path: Path) -> None:
    need("redis-server", "nginx", "openssl")
    command = f"scripts/serve --sandbox --workers 1 --port {free_port()} --http-port {free_port()}"
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        shell = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env=newcomer_env(), stdout=out, stderr=err, start_new_session=True
        )
    kept: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while "\nlogs " not in "\n" + out_path.read_text():
            assert shell.poll() is None and time.monotonic() < deadline, out_path.read_text() + err_path.read_text()
            time.sleep(0.2)
        found = re.search(r"^redis\s+(redis://\S+)", out_path.read_text(), re.M)
        assert found
        try:
            redis.Redis.from_url(found.group(1)).shutdown(nosave=True)  # Redis goes away under the gateway
        except redis.exceptions.ConnectionError:
            pass
        assert shell.wait(timeout=60) == 1
        stderr = err_path.read_text()
        assert re.search(r"^scripts/serve: redis \(status -?\d+\) exited; stopping the rest$", stderr, re.M), stderr
        assert re.search(r"^--- last \d+ lines of \S+/redis\.log", stderr, re.M), stderr
        assert "Ready to accept connections" in stderr  # from redis's own log
        match = re.search(r"^logs kept in (\S+)$", stderr, re.M)
        assert match, stderr
        kept = Path(match.group(1))
        assert (kept / "redis.log").exists() and (kept / "gunicorn.log").exists()
        assert wait_group_gone(shell.pid, 15), "children of scripts/serve are left running"
    finally:
        if shell.poll() is None or group_alive(shell.pid):
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait(timeout=10)
        if kept is not None:
            shutil.rmtree(kept.parent, ignore_errors=True)
