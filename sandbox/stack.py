"""The production stack, run locally: Redis, the simulator, gunicorn and nginx as child processes of this one.

`scripts/serve` runs it for a person, the tests (tests/test_nginx.py) and bench/ for themselves, so what they
measure is what a person runs. Everything binds 127.0.0.1. nginx runs from a work dir (a temporary one unless
given) holding the substituted nginx.conf, a self-signed certificate (unless one is given), its pid, the children's
logs and temp files; gunicorn binds a free loopback port. Redis and the simulator start on free ports unless their
URLs are given. In sandbox mode one `python -m sandbox` process is shared by every worker (a simulator per worker
would hand out different tokens and tickets). With `stream`, the Stream mode receiver (`flask events stream`, every
registered corp of a current kind) runs beside gunicorn, its metrics on a loopback port of its own.

The gateway is only ever a command here (`app:create_app()` under gunicorn) and a set of environment variables:
the simulator's package imports none of the gateway's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from sandbox.nginx import render_nginx_conf, self_signed_cert
from sandbox.processes import (
    ChildFailed,
    free_port,
    http_ok,
    tcp_open,
    terminate,
    wait_until,
    without_traceback_frames,
)
from sandbox.redis_server import redis_server_argv

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "gunicorn.conf.py"
LOG_TAIL_LINES = 30


def public_origin(host: str, port: int) -> str:
    """The origin a browser sees for https://host:port (no port when it is 443)."""
    return f"https://{host}" if port == 443 else f"https://{host}:{port}"


class Stack:
    """Redis, an optional shared simulator, gunicorn and nginx as child processes of this one."""

    def __init__(
        self,
        *,
        workers: int = 2,
        threads: int | None = None,
        https_port: int = 8443,
        http_port: int | None = None,
        server_name: str = "127.0.0.1",
        sandbox: bool = True,
        redis_url: str | None = None,
        api_base: str | None = None,
        simulator_rate_limit: int = 20,
        workdir: Path | None = None,
        cert: Path | None = None,
        key: Path | None = None,
        app: str = "app:create_app()",
        python: str = sys.executable,
        nginx: str = "nginx",
        conf_filter: Callable[[str], str] | None = None,
        env: Mapping[str, str] | None = None,
        quiet: bool = True,
        stream: bool = False,
    ) -> None:
        self.workers = workers
        self.threads = threads
        self.https_port = https_port
        self.http_port = http_port if http_port is not None else free_port()
        self.server_name = server_name
        self.sandbox = sandbox
        self.redis_url = redis_url
        self.api_base = api_base
        self.simulator_rate_limit = simulator_rate_limit
        self.app = app
        self.python = python
        self.nginx = shutil.which(nginx) or (nginx if os.path.exists(nginx) else "/usr/sbin/nginx")
        self.conf_filter = conf_filter
        self.extra_env = dict(env or {})
        self.quiet = quiet
        self.stream = stream
        self.stream_metrics_port = free_port() if stream else None
        self.owns_workdir = workdir is None
        # 0755 and under /tmp: nginx's workers drop to `nobody` when started as root and must reach temp/.
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="gateway-serve-", dir="/tmp"))
        self.workdir.chmod(0o755)
        (self.workdir / "logs").mkdir(exist_ok=True)
        (self.workdir / "temp").mkdir(exist_ok=True)
        self.cert, self.key = cert, key
        self.gunicorn_port = free_port()
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.conf_path = self.workdir / "nginx.conf"

    # ---- addresses ------------------------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        return public_origin(self.server_name, self.https_port)

    @property
    def gunicorn_url(self) -> str:
        return f"http://127.0.0.1:{self.gunicorn_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def access_log(self) -> Path:
        return self.workdir / "logs" / "gunicorn-access.log"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of a child's logs, each under a header naming the file (or why there is nothing)."""
        sections = []
        # nginx writes its errors to logs/error.log (nginx.conf's error_log), not to its stderr.
        files = [f"{name}.log", "error.log"] if name == "nginx" else [f"{name}.log"]
        for path in (self.log_dir / file for file in files):
            if not self.quiet and path.name == f"{name}.log":
                sections.append(f"({name} wrote to this terminal, above)")
                continue
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            kept = without_traceback_frames(text)
            tail = kept[-lines:]
            if tail:
                note = " (Python traceback frames left out)" if len(kept) < len(text.splitlines()) else ""
                sections.append("\n".join([f"--- last {len(tail)} lines of {path}{note} ---", *tail, "---"]))
            else:
                sections.append(f"({path} is empty or missing)")
        return "\n".join(sections)

    def name_of(self, proc: subprocess.Popen[bytes] | None) -> str | None:
        """The name a child was started under."""
        return next((name for name, p in self.procs if p is proc), None)

    def dead(self) -> list[str]:
        """Names of the children that have exited."""
        return [name for name, proc in self.procs if proc.poll() is not None]

    def keep_logs(self) -> None:
        """Leave the work dir (and its logs) in place when stopping, for the post-mortem."""
        self.owns_workdir = False

    # ---- processes ------------------------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 (the child owns it)
        out = log if self.quiet else None
        proc = subprocess.Popen(argv, cwd=ROOT, env=dict(env or os.environ), stdout=out, stderr=out)
        log.close()
        self.procs.append((name, proc))
        return proc

    def start_redis(self) -> None:
        port = free_port()
        proc = self._spawn("redis", redis_server_argv(port, "--appendonly", "no"))
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: tcp_open(port), "redis-server", proc, 10)

    def start_simulator(self) -> None:
        port = free_port()
        argv = [self.python, "-m", "sandbox", "--port", str(port), "--rate-limit", str(self.simulator_rate_limit)]
        proc = self._spawn("simulator", argv)
        self.api_base = f"http://127.0.0.1:{port}"
        wait_until(lambda: tcp_open(port), "simulator", proc, 15)

    def gateway_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GATEWAY_TRUST_PROXY="1",
            GATEWAY_ACCESS_LOG=str(self.access_log),
            PYTHONUNBUFFERED="1",
        )
        if self.redis_url:
            env["REDIS_URL"] = self.redis_url
        if self.api_base:
            env["DINGTALK_API_BASE"] = self.api_base
            env.setdefault("DINGTALK_OPENAPI_BASE", self.api_base)  # a simulator serves both API generations
        if self.sandbox:
            env["GATEWAY_SANDBOX"] = "1"
            origins = [self.public_url]
            if self.server_name == "127.0.0.1":
                origins.append(public_origin("localhost", self.https_port))
            env["GATEWAY_SANDBOX_ORIGINS"] = ",".join(origins)
        env.update(self.extra_env)
        return env

    def start_gunicorn(self) -> None:
        argv = [
            self.python,
            "-m",
            "gunicorn",
            "-c",
            str(GUNICORN_CONF),
            "--bind",
            f"127.0.0.1:{self.gunicorn_port}",
            "--workers",
            str(self.workers),
            # Unless given: gunicorn.conf.py's, which leaves threads for page views beside the paced logins.
            *(["--threads", str(self.threads)] if self.threads else []),
            self.app,
        ]
        proc = self._spawn("gunicorn", argv, self.gateway_env())
        wait_until(lambda: http_ok(f"{self.gunicorn_url}/healthz"), "gunicorn", proc, 30)

    def start_stream(self) -> None:
        """`flask events stream` with the gateway's environment; up once its metrics port answers."""
        port = self.stream_metrics_port or free_port()
        self.stream_metrics_port = port
        argv = [self.python, "-m", "flask", "--app", self.app, "events", "stream", "--metrics-port", str(port)]
        proc = self._spawn("stream", argv, self.gateway_env())
        wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/metrics"), "stream", proc, 30)

    def render(self) -> Path:
        """Write the substituted nginx.conf (and a certificate if none was given) into the work dir."""
        if self.cert is None or self.key is None:
            self.cert, self.key = self_signed_cert(self.workdir, self.server_name)
        host = self.server_name if self.https_port == 443 else f"{self.server_name}:{self.https_port}"
        text = render_nginx_conf(
            {
                "HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
                "HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
                "SERVER_NAME": self.server_name,
                "PUBLIC_HOST": host,
                "UPSTREAM": f"127.0.0.1:{self.gunicorn_port}",
                "STATIC_ROOT": str(ROOT / "static"),
                "TLS_CERT": str(self.cert),
                "TLS_KEY": str(self.key),
            }
        )
        if self.conf_filter is not None:
            text = self.conf_filter(text)
        self.conf_path.write_text(text, encoding="utf-8")
        return self.conf_path

    def nginx_argv(self, *extra: str) -> list[str]:
        return [self.nginx, "-p", f"{self.workdir}/", "-c", str(self.conf_path), "-g", "daemon off;", *extra]

    def check_nginx(self) -> subprocess.CompletedProcess[str]:
        """`nginx -t` on the rendered config."""
        return subprocess.run(self.nginx_argv("-t"), capture_output=True, text=True, timeout=30)

    def start_nginx(self) -> None:
        if not self.conf_path.exists():
            self.render()
        proc = self._spawn("nginx", self.nginx_argv())
        wait_until(lambda: tcp_open(self.https_port), "nginx", proc, 10)

    def start(self) -> Stack:
        """Start everything that is not given from outside; stop what started if anything fails.

        A child that fails raises ChildFailed with the end of its log, and the work dir (logs) is kept.
        """
        try:
            if not self.redis_url:
                self.start_redis()
            if self.sandbox and not self.api_base:
                self.start_simulator()
            self.start_gunicorn()
            if self.stream:  # after gunicorn: in sandbox mode its workers have registered the demo corps by now
                self.start_stream()
            self.render()
            checked = self.check_nginx()
            if checked.returncode != 0:
                raise ChildFailed(f"nginx -t failed on {self.conf_path}:\n{checked.stderr.rstrip()}", None)
            self.start_nginx()
        except ChildFailed as e:
            name = self.name_of(e.proc)
            self.keep_logs()
            self.stop()  # before reading the log, so it holds the child's last words
            tail = self.log_tail(name) if name else ""
            kept = f"logs kept in {self.log_dir}/"
            raise ChildFailed("\n".join(part for part in (str(e), tail, kept) if part), e.proc) from None
        except BaseException:
            self.stop()
            raise
        return self

    def stop_process(self, name: str) -> None:
        """Stop one child (gunicorn and nginx finish in-flight requests on SIGTERM/SIGQUIT)."""
        for entry in list(self.procs):
            if entry[0] == name:
                terminate(*entry)
                self.procs.remove(entry)

    def stop(self) -> None:
        """Stop every child, newest first, then remove the work dir if it was ours."""
        while self.procs:
            terminate(*self.procs.pop())
        if self.owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
