"""The built-in DingTalk simulator: upstream oapi, the DingTalk client's side, and test controls."""

from __future__ import annotations

from sandbox.demo import (
    DEMO_AGENT_ID,
    DEMO_CHANNEL_SECRET,
    DEMO_CORP_SECRET,
    DEMO_CORPID,
    DEMO_PEOPLE,
    add_demo,
)
from sandbox.http import create_simulator_app
from sandbox.server import SimulatorServer
from sandbox.signature import accepted_urls, form_decode, sign
from sandbox.state import (
    APIS,
    CODE_TTL,
    TICKET_TTL,
    TOKEN_TTL,
    Reply,
    Simulator,
    SimulatorError,
)

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
    "add_demo",
    "create_simulator_app",
    "form_decode",
    "sign",
]
