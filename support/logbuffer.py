"""Recent log lines of this process, by request id, so a trace entry's request id opens its log lines.

The gateway logs every line with `[request_id]` and never logs secrets, tokens, tickets or codes (house
style 13), so keeping the last lines in memory adds nothing sensitive.

Why the page is often empty: the buffer is per process. gunicorn runs several workers (WEB_CONCURRENCY, 2 by
default), each with its own buffer, and the console request that asks for a request id's lines is served by
whichever worker picks it up, usually not the one that served the request. A restarted worker, or more than
CAPACITY lines since, empties it too. Sharing the lines (e.g. through Redis) would put log text in the store and
cost a write per line; instead `report()` says plainly when this worker has nothing, and gives the exact grep
over the log files, which hold every worker's lines.
"""

from __future__ import annotations

import logging
import os
import shlex
import stat
import sys
import threading
from collections import deque
from typing import Any

from flask import has_request_context

from gateway.logs import FORMAT, current_request_id

CAPACITY = 5000


class RecentLines(logging.Handler):
    """Keep the last CAPACITY lines logged during a request, with their request id."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(level=logging.INFO)
        self.lines: deque[tuple[str, str]] = deque(maxlen=capacity)
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        if not has_request_context():
            return
        request_id = current_request_id() or ""
        if not request_id:
            return
        try:
            record.request_id = request_id
            self.lines.append((request_id, self.format(record)))
        except Exception:  # a log handler must never break the request
            self.handleError(record)

    def for_request(self, request_id: str, limit: int = 200) -> list[str]:
        return [line for rid, line in list(self.lines) if rid == request_id][-limit:]


_HANDLER: RecentLines | None = None
_LOCK = threading.Lock()


def install() -> RecentLines:
    """Attach the one process-wide handler to the root logger (idempotent: apps share it)."""
    global _HANDLER
    with _LOCK:
        if _HANDLER is None:
            _HANDLER = RecentLines()
            logging.getLogger().addHandler(_HANDLER)
        return _HANDLER


def lines_for(request_id: str) -> list[str]:
    return install().for_request(request_id)


def _stream_file(stream: Any) -> str | None:
    """The path of the regular file a stream writes to (gunicorn's stderr redirected to a file), else None."""
    try:
        fd = stream.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        path = os.readlink(f"/proc/self/fd/{fd}")
    except (AttributeError, OSError, ValueError):
        return None
    return path if path.startswith("/") and os.path.exists(path) else None


def log_files() -> list[str]:
    """The files this process's log lines end up in, as far as the process can tell.

    Files of the root logger's FileHandlers, the file stderr is redirected to (the app logs to stderr; gunicorn
    passes it on), and gunicorn's access log (GATEWAY_ACCESS_LOG, its lines carry `rid=<request id>`).
    """
    found: list[str] = []
    for handler in logging.getLogger().handlers:
        path = getattr(handler, "baseFilename", None)
        if isinstance(handler, logging.FileHandler) and path:
            found.append(str(path))
    for stream in (sys.stderr, sys.__stderr__):
        path = _stream_file(stream)
        if path:
            found.append(path)
    access = os.environ.get("GATEWAY_ACCESS_LOG", "")
    if access and access != "-":
        found.append(access)
    return list(dict.fromkeys(found))


def grep_command(request_id: str, files: list[str] | None = None) -> str:
    """The exact command that finds a request's lines in the log files: `[id]` in app lines, `rid=id` in the
    access log. Without a known file, the gateway logs to stderr: pipe the journal (or the file) into it."""
    pattern = f"grep -F -e {shlex.quote('[' + request_id + ']')} -e {shlex.quote('rid=' + request_id)}"
    files = log_files() if files is None else files
    if files:
        return pattern + " " + " ".join(shlex.quote(f) for f in files)
    return pattern + " /path/to/gateway.log   # or: journalctl -u <gateway service> | " + pattern


def report(request_id: str) -> dict[str, Any]:
    """What the console shows for a request id: this worker's lines, and honestly where the rest are."""
    lines = lines_for(request_id)
    files = log_files()
    if lines:
        note = (
            f"Lines kept in memory by this worker process (pid {os.getpid()}) only; other workers' lines for this "
            "request, if any, are in the log files."
        )
    else:
        note = (
            f"No lines for this request in this worker's memory (pid {os.getpid()}). With several gunicorn "
            "workers the request was most likely served by another one (or this worker restarted since); "
            "every worker's lines are in the log files."
        )
    return {
        "request_id": request_id,
        "lines": lines,
        "found": bool(lines),
        "worker_pid": os.getpid(),
        "log_files": files,
        "grep": grep_command(request_id, files),
        "note": note,
    }
