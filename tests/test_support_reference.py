# ruff: noqa: F811 - the fixtures of tests/test_support.py, imported
"""Issue 22: reference codes, the trace search API, the problem pages' wording, the page's dd.error report."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import trace
from sandbox.demo import DEMO_AGENT_ID, DEMO_CORPID
from tests.helpers import ORIGIN
from tests.test_support import API, BEARER, sapp, sclient, ticket  # noqa: F401 - its fixtures


def test_reference_codes_are_short_stable_and_forgiving() -> None:
    ref = trace.reference_of("0123456789abcdef")
    assert ref == trace.reference_of("0123456789abcdef") and ref is not None
    assert len(ref) == 9 and ref.startswith("R-")
    assert trace.normalize_reference(ref.lower().replace("-", "")) == ref
    assert trace.normalize_reference("not a code") is None


def test_every_error_envelope_carries_the_reference(sclient: Any) -> None:
    answer = sclient.get(f"/channel/config?corpid={DEMO_CORPID}&agentid=999&url={ORIGIN}/app")
    error = answer.get_json()["error"]
    assert error["code"] == "agent_mismatch"
    assert error["reference"] == trace.reference_of(error["request_id"])
    found = sclient.get(f"{API}/trace?q={error['reference']}", headers=BEARER).get_json()["entries"]
    assert [e["outcome"] for e in found] == ["agent_mismatch"] and found[0]["corpid"] == DEMO_CORPID


@pytest.mark.parametrize(
    ("query", "status", "says", "outcome"),
    [
        ("agentid=abc&corpid=" + DEMO_CORPID, 400, "链接格式不正确", "malformed"),
        ("corpid=" + DEMO_CORPID, 400, "链接不完整", "missing"),
        ("corpid=dingnobody&agentid=1", 404, "该企业尚未接入", "unknown_corp"),
        (f"corpid={DEMO_CORPID}&agentid=999", 400, "应用 ID 不匹配", "agent_mismatch"),
    ],
)
def test_problem_pages_show_a_reference_support_can_find(
    sclient: Any, query: str, status: int, says: str, outcome: str
) -> None:
    page = sclient.get(f"/channel/login?{query}")
    html = page.get_data(as_text=True)
    assert page.status_code == status and says in html
    reference = trace.reference_of(page.headers["X-Request-Id"])
    assert reference in html
    found = sclient.get(f"{API}/trace?reference={reference}", headers=BEARER).get_json()["entries"]
    assert len(found) == 1 and found[0]["outcome"] == outcome and found[0]["time_iso"].endswith("+00:00")


def test_trace_search_filters(sclient: Any, sim: Any) -> None:
    from tests.helpers import UNLINKED

    code = sim.mint_auth_code(DEMO_CORPID, UNLINKED["unionid"])
    login = sclient.post("/channel/login", json={"corpid": DEMO_CORPID, "code": code})
    rid = login.headers["X-Request-Id"]

    def search(query: str) -> list[dict[str, Any]]:
        answer = sclient.get(f"{API}/trace?{query}", headers=BEARER)
        assert answer.status_code == 200, answer.get_json()
        return answer.get_json()["entries"]

    assert [e["request_id"] for e in search(f"request_id={rid}")] == [rid]
    assert [e["request_id"] for e in search(f"q={rid}")] == [rid]
    assert rid in [e["request_id"] for e in search(f"unionid={UNLINKED['unionid']}")]
    assert rid in [e["request_id"] for e in search("outcome=not_linked")]
    assert search("outcome=linked&q=" + rid) == []
    assert search("since=2999-01-01T00:00:00%2B08:00") == []
    assert rid in [e["request_id"] for e in search("since=0&until=9999999999")]
    bad = sclient.get(f"{API}/trace?since=2024-01-01T00:00", headers=BEARER)
    assert bad.status_code == 400 and "timezone" in bad.get_json()["error"]["message"]
    assert sclient.get(f"{API}/trace").status_code == 401


def test_the_dd_error_report_is_kept_for_the_prefilled_checker(sclient: Any, ticket: str) -> None:
    config = sclient.get(f"/channel/config?corpid={DEMO_CORPID}&agentid={DEMO_AGENT_ID}&url={ORIGIN}/app").get_json()
    report = sclient.post(
        "/channel/config/error",
        json={
            "corpid": DEMO_CORPID,
            "agentid": DEMO_AGENT_ID,
            "url": f"{ORIGIN}/app?tab=2",
            "errorCode": 52013,
            "errorMessage": "签名校验失败",
            "signedUrl": config["url"],
            "nonceStr": config["nonceStr"],
            "timeStamp": config["timeStamp"],
            "signature": config["signature"],
            "corpId": DEMO_CORPID,
            "agentId": DEMO_AGENT_ID,
            "type": 1,
        },
    )
    assert report.status_code == 202
    reference = report.get_json()["reference"]
    entry = sclient.get(f"{API}/trace?q={reference}", headers=BEARER).get_json()["entries"][0]
    assert entry["check"]["signature"] == config["signature"] and entry["check"]["signedUrl"] == config["url"]
    assert ticket not in str(entry)
    result = sclient.post(f"{API}/corps/{DEMO_CORPID}/signature-check", headers=BEARER, json=entry["check"]).get_json()
    assert result["verdict"] == "url" and result["summary"].startswith("URL 不一致")
    assert not any(f["part"] == "port" for f in result["findings"])
