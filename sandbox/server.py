"""Run a simulator on 127.0.0.1 in a background thread, for tests and sandbox mode."""

from __future__ import annotations

import threading
from types import TracebackType

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from sandbox.http import create_simulator_app
from sandbox.state import Simulator


class _QuietHandler(WSGIRequestHandler):
    """Serve requests without an access-log line each (tests make thousands); errors still log."""

    protocol_version = "HTTP/1.1"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Skip the access log."""


class SimulatorServer:
    """Serve a Simulator over HTTP on an ephemeral loopback port; use as a context manager."""

    def __init__(
        self, sim: Simulator | None = None, *, host: str = "127.0.0.1", port: int = 0, quiet: bool = True
    ) -> None:
        self.sim = sim if sim is not None else Simulator.demo()
        self.host = host
        self.port = port
        self._quiet = quiet
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """Return "http://127.0.0.1:PORT" once started."""
        if self._server is None:
            raise RuntimeError("SimulatorServer is not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> SimulatorServer:
        """Bind the port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("SimulatorServer is already started")
        server = make_server(
            self.host,
            self.port,
            create_simulator_app(self.sim),
            threaded=True,
            request_handler=_QuietHandler if self._quiet else None,
        )
        self._server = server
        self.port = server.server_port
        # A short poll keeps stop() quick: tests start and stop many servers.
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="dingtalk-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self.sim.stream.stop()
        self._server = None
        self._thread = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
