"""channel.cors: the CORS layer on its own, around a plain WSGI app (tests/test_channel.py has it in the app)."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import Client
from werkzeug.wrappers import Response

from web.cors import CORPID_KEY, ChannelCors, add_vary_origin, request_corpid

ORIGIN = "https://h5.example.com"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ([], [("Vary", "Origin")]),
        ([("Vary", "Accept")], [("Vary", "Accept, Origin")]),
        ([("vary", "accept-encoding, origin")], [("vary", "accept-encoding, origin")]),
        ([("Vary", "Origin")], [("Vary", "Origin")]),
    ],
)
def test_vary_names_origin_once(before: list[tuple[str, str]], after: list[tuple[str, str]]) -> None:
    headers = list(before)
    add_vary_origin(headers)
    assert headers == after


def test_the_corp_is_what_a_view_recorded_else_the_query() -> None:
    assert request_corpid({CORPID_KEY: "fromview", "QUERY_STRING": "corpid=fromquery"}) == "fromview"
    assert request_corpid({"QUERY_STRING": "agentid=1&corpid=fromquery&corpid=second"}) == "fromquery"
    assert request_corpid({"QUERY_STRING": "agentid=1"}) is None
    assert request_corpid({"QUERY_STRING": "corpid=&corpid=other"}) == ""  # as request.args: the first, blank
    assert request_corpid({}) is None


def wrapped(view_headers: dict[str, str] | None = None) -> tuple[Client, list[tuple[str, str]]]:
    """A client for the layer around a one-response app, and the (corpid, origin) pairs it asked about."""
    asked: list[tuple[str, str]] = []

    def allows(corpid: str, origin: str) -> bool:
        asked.append((corpid, origin))
        return corpid == "corp1" and origin == ORIGIN

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response("{}", headers=view_headers)(environ, start_response)

    return Client(ChannelCors(app, allows)), asked


def test_grants_only_the_named_corps_origins() -> None:
    client, asked = wrapped()
    ok = client.get("/channel/config?corpid=corp1", headers={"Origin": ORIGIN})
    assert ok.headers.getlist("Access-Control-Allow-Origin") == [ORIGIN]
    assert ok.headers.getlist("Vary") == ["Origin"]
    for query, origin in (("corpid=corp2", ORIGIN), ("corpid=corp1", "https://evil.example.com"), ("", ORIGIN)):
        resp = client.get(f"/channel/config?{query}", headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in resp.headers and resp.headers["Vary"] == "Origin"
    assert asked == [("corp1", ORIGIN), ("corp2", ORIGIN), ("corp1", "https://evil.example.com")]


def test_same_origin_requests_cost_no_lookup() -> None:
    client, asked = wrapped()
    resp = client.get("/channel/config?corpid=corp1")
    assert resp.headers["Vary"] == "Origin" and "Access-Control-Allow-Origin" not in resp.headers
    assert asked == []


def test_a_grant_the_view_made_is_left_alone() -> None:
    client, asked = wrapped({"Access-Control-Allow-Origin": ORIGIN, "Vary": "Origin"})
    resp = client.options("/channel/login", headers={"Origin": ORIGIN})
    assert resp.headers.getlist("Access-Control-Allow-Origin") == [ORIGIN]
    assert resp.headers.getlist("Vary") == ["Origin"]
    assert asked == []


def test_other_paths_are_untouched() -> None:
    client, asked = wrapped()
    for path in ("/healthz?corpid=corp1", "/support/", "/channelx/config?corpid=corp1"):
        resp = client.get(path, headers={"Origin": ORIGIN})
        assert "Vary" not in resp.headers and "Access-Control-Allow-Origin" not in resp.headers
    assert asked == []


def test_a_failing_grant_check_leaves_the_answer_alone(caplog: pytest.LogCaptureFixture) -> None:
    """The check runs as the response starts, outside Flask's error handling: it must not turn the answer into
    the server's bare 500."""

    def allows(corpid: str, origin: str) -> bool:
        raise ValueError("unreadable corp record")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        return Response('{"error": {}}', status=404)(environ, start_response)

    resp = Client(ChannelCors(app, allows)).get("/channel/nope?corpid=corp1", headers={"Origin": ORIGIN})
    assert resp.status_code == 404 and resp.get_data() == b'{"error": {}}'
    assert "Access-Control-Allow-Origin" not in resp.headers and resp.headers["Vary"] == "Origin"
    assert any(r.exc_info and "CORS" in r.getMessage() for r in caplog.records)
