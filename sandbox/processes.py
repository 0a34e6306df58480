"""Child processes on loopback ports: pick a free port, wait for a child to come up, stop it, read its log.

Shared by the local stack (sandbox/stack.py), the throwaway Redis (sandbox/redis_server.py), the tests and
bench/. Standard library only.
"""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable


class ChildFailed(RuntimeError):
    """A child process exited, or did not come up in time."""

    def __init__(self, message: str, proc: subprocess.Popen[bytes] | None) -> None:
        super().__init__(message)
        self.proc = proc


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_open(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    """True when url answers 2xx (certificates not verified: the local one is self-signed)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as resp:  # noqa: S310 (loopback only)
            return 200 <= resp.status < 300
    except urllib.error.HTTPError:
        return False


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """Poll check() until it holds; fail early if proc dies, and after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ChildFailed(f"{what} exited with status {proc.returncode}", proc)
        try:
            if check():
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.05)
    raise ChildFailed(f"{what} did not come up within {timeout:g} s", proc)


def terminate(name: str, proc: subprocess.Popen[bytes]) -> None:
    """Stop a child gracefully, then for good: nginx on SIGQUIT, everything else on SIGTERM."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGQUIT if name == "nginx" else signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def without_traceback_frames(text: str) -> list[str]:
    """text's lines without Python traceback frames, so a short tail still reaches the exception's message.

    gunicorn logs one long traceback per worker that fails to boot, and its own after them; the message that says
    why (a bad setting, a missing module) sits between them.
    """
    kept: list[str] = []
    in_frame = False
    for line in text.splitlines():
        if line.startswith('  File "'):
            in_frame = True  # the frame's source and caret lines follow, indented deeper
            continue
        if in_frame and line.startswith("    "):
            continue
        in_frame = False
        kept.append(line)
    return kept
