"""The rule preview page (issue 37) over HTTP, on SQLite and PostgreSQL: a candidate uploaded or pasted is checked as
start-up checks it and replayed read-only on the stored traffic (CAS-05 breach times of Dx12 cases), the changed
cases shown and downloadable as CSV; an invalid candidate shows start-up's error; scope, CSRF, service binding, audit."""

from __future__ import annotations

import html
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway.cas.rules.schema import DEFAULT_RULES_DIR, RuleFileError
from gateway.platform.clock import FixedClock
from gateway.platform.store.models import AuditEntityRow, AuditEventRow, ResourceRow
from gateway.rules.candidate import check_candidate
from tests.conftest import NOW, add_test_client, fixture_json, task_of
from tests.test_console_pages import browser, csrf_of, sign_in  # noqa: F401  (the signed-in browser fixture)

LIVE = (DEFAULT_RULES_DIR / "bnssg.yaml").read_text(encoding="utf-8")
SHORTER_DX12 = LIVE.replace('version: "2026.12.3"', 'version: "2026.12.99"').replace("Dx12:  {within: PT2H,", "Dx12:  {within: PT1H,")


def _stored(client: Any, clock: FixedClock) -> dict[str, str]:
    """A Dx12 case and a 6-hour case of BNSSG, received two hours before now: their Task references."""
    tasks = {}
    for label, fixture in (("dx12", "option1-dx12.case.json"), ("option2", "option2-standard.case.json")):
        at = NOW - timedelta(hours=2)
        body = fixture_json(fixture) | {"case_id": f"CONSOLE-WHATIF-{label}", "call_time": at.isoformat()}
        clock.set(at + timedelta(minutes=1))
        reply = client.post("/ingest/nhs111", content=json.dumps(body), headers={"Content-Type": "application/json"})
        assert reply.status_code == 201, reply.text
        tasks[label] = f"Task/{task_of(reply.json())['id']}"
    clock.set(NOW)
    return tasks


def _preview(browser: TestClient, **fields: str) -> Any:  # noqa: F811
    token = csrf_of(browser.get("/console/rules").text)
    return browser.post("/console/rules", data={"csrf": token, "since": "30d", **fields})


def test_an_uploaded_candidate_shows_the_cases_it_changes_CAS_05(app: Any, client: Any, clock: FixedClock, browser: TestClient) -> None:  # noqa: F811
    tasks = _stored(client, clock)
    assert sign_in(browser, add_test_client(app, {"rules:preview"}, name="rules-person")).status_code == 303
    assert 'href="/console/rules"' in browser.get("/console/rules").text  # in the menu
    with app.state.sessions() as session:
        before = session.execute(select(func.count()).select_from(ResourceRow)).scalar_one()
    token = csrf_of(browser.get("/console/rules").text)
    page = browser.post("/console/rules", data={"csrf": token, "since": "30d"}, files={"upload": ("bnssg.yaml", SHORTER_DX12, "text/yaml")})
    assert page.status_code == 200, page.text
    assert "2026.12.3 to 2026.12.99" in page.text
    changed = page.text.split('id="changed-cases"', 1)[1]
    assert tasks["dx12"] in changed and tasks["option2"] not in changed and "CAS-05" in changed
    assert "breach-time" in page.text.split('id="change-counts"', 1)[1]
    assert "PT2H" in page.text.split('id="value-changes"', 1)[1]
    with app.state.sessions() as session:
        assert session.execute(select(func.count()).select_from(ResourceRow)).scalar_one() == before  # read-only
        audited = session.execute(
            select(AuditEventRow.id).join(AuditEntityRow, AuditEntityRow.event_id == AuditEventRow.id)
            .where(AuditEntityRow.reference == tasks["dx12"])
        ).scalars().all()  # fmt: skip
    runs = [client.get(f"/fhir/AuditEvent/{event}").json() for event in audited]
    mine = [e["entity"][-1]["description"] for e in runs if e["agent"][0]["who"].get("display") == "rules-person"]
    assert mine == ["POST /console/rules"]


def test_the_csv_download_resubmits_the_candidate_CAS_05(app: Any, client: Any, clock: FixedClock, browser: TestClient) -> None:  # noqa: F811
    tasks = _stored(client, clock)
    assert sign_in(browser, add_test_client(app, {"rules:preview"})).status_code == 303
    page = _preview(browser, text=SHORTER_DX12)
    assert page.status_code == 200, page.text
    download = page.text.split('action="/console/rules/csv"', 1)[1]
    hidden = dict(re.findall(r'name="(\w+)" value="([^"]*)"', download))
    fields = {name: html.unescape(value) for name, value in hidden.items()}
    assert fields["text"] == SHORTER_DX12
    answer = browser.post("/console/rules/csv", data=fields)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert "attachment" in answer.headers["content-disposition"]
    rows = answer.text.splitlines()
    assert rows[0].startswith("case,channel") and len(rows) == 2 and rows[1].startswith(tasks["dx12"])
    assert browser.post("/console/rules/csv", data={**fields, "csrf": "stale"}).status_code == 403


def test_an_invalid_candidate_shows_start_ups_error_and_no_500(app: Any, browser: TestClient) -> None:  # noqa: F811
    assert sign_in(browser, add_test_client(app, {"rules:preview"})).status_code == 303
    broken = LIVE.replace("Dx12:  {within: PT2H,", "Dx12:  {within: soon,")
    page = _preview(browser, text=broken)
    assert page.status_code == 422 and "The candidate was refused" in page.text
    with pytest.raises(RuleFileError) as start_up:
        check_candidate(broken, Path("candidate.yaml"), app.state.settings)
    assert f"refused: {start_up.value}" in html.unescape(page.text)  # start-up's own words
    assert _preview(browser, text="version: [unclosed").status_code == 422
    assert _preview(browser, text="").status_code == 422  # nothing chosen
    assert "give a window" in _preview(browser, text=SHORTER_DX12, since="forever").text


def test_the_page_needs_its_scope_and_a_csrf_token(app: Any, browser: TestClient) -> None:  # noqa: F811
    assert sign_in(browser, add_test_client(app, {"cas:operate"})).status_code == 303
    assert browser.get("/console/rules").status_code == 403
    assert 'href="/console/rules"' not in browser.get("/console/queue").text  # not in this person's menu
    assert browser.post("/console/rules", data={"text": SHORTER_DX12}).status_code == 403
    other = TestClient(app, raise_server_exceptions=False, base_url="http://localhost")
    assert sign_in(other, add_test_client(app, {"rules:preview"})).status_code == 303
    refused = other.post("/console/rules", data={"text": SHORTER_DX12, "csrf": "forged"})
    assert refused.status_code == 403 and "token is missing or stale" in refused.text


def test_a_bound_key_previews_its_own_service_only(app: Any, browser: TestClient) -> None:  # noqa: F811
    assert sign_in(browser, add_test_client(app, {"rules:preview"}, service="bsw")).status_code == 303
    refused = _preview(browser, text=SHORTER_DX12)
    assert refused.status_code == 403 and "bound to bsw" in refused.text
