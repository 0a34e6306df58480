"""Run a standalone demo simulator: `python -m sandbox --port 5101 [--host 127.0.0.1]`.

One shared simulator lets every worker of a multi-process gateway see the same tokens and tickets.
"""

from __future__ import annotations

import argparse

from werkzeug.serving import make_server

from sandbox.demo import DEMO_CORPID
from sandbox.http import create_simulator_app
from sandbox.state import Simulator


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve the demo simulator until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m sandbox", description="Run the DingTalk simulator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5101, help="port to bind, 0 for any (default 5101)")
    parser.add_argument("--rate-limit", type=int, default=20, help="calls/s per corp and API, 0 for none (default 20)")
    args = parser.parse_args(argv)
    sim = Simulator.demo(rate_limit=args.rate_limit or None)
    server = make_server(args.host, args.port, create_simulator_app(sim), threaded=True)
    # The first line is machine-read by tests when --port 0 picks the port.
    url = f"http://{args.host}:{server.server_port}"
    print(f"DingTalk simulator on {url} (demo corp {DEMO_CORPID})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
