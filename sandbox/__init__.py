"""The built-in DingTalk simulator: upstream oapi, the DingTalk client's side, and test controls.

Beside it, the harness that runs the gateway against it as a person, the tests and bench/ do: stack.py (Redis, the
simulator, gunicorn and nginx as child processes; `scripts/serve` is its command), nginx.py, redis_server.py,
processes.py, and traffic.py (requests from several processes at once). The gateway is a command or a
"module:function" name to them, never an import.
"""

from __future__ import annotations

from sandbox.apis import TICKET_TTL, TOKEN_TTL
from sandbox.client_side import CODE_TTL
from sandbox.demo import DEMO_AGENT_ID, DEMO_CHANNEL_SECRET, DEMO_CORP_SECRET, DEMO_CORPID, DEMO_PEOPLE
from sandbox.http import create_simulator_app
from sandbox.model import APIS, Reply, SimulatorError
from sandbox.server import SimulatorServer
from sandbox.signature import accepted_urls, form_decode, sign
from sandbox.state import Simulator

__all__ = [
    "APIS",
    "CODE_TTL",
    "DEMO_AGENT_ID",
    "DEMO_CHANNEL_SECRET",
    "DEMO_CORPID",
    "DEMO_CORP_SECRET",
    "DEMO_PEOPLE",
    "TICKET_TTL",
    "TOKEN_TTL",
    "Reply",
    "Simulator",
    "SimulatorError",
    "SimulatorServer",
    "accepted_urls",
    "create_simulator_app",
    "form_decode",
    "sign",
]
