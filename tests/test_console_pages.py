"""The operator console over HTTP (issue 36), on SQLite and PostgreSQL: sign-in and its server-side session (HttpOnly,
SameSite=Strict, Secure off localhost, idle timeout, sign-out, revocation, shared by replicas), CSRF on forms, the
scope table and service binding on pages, audit of page views. tests/test_console_browser.py drives the same pages
in Chromium."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway.api.app import create_app
from gateway.platform.clock import FixedClock
from gateway.platform.security.clients import revoke_client
from gateway.platform.store.models import AuditEntityRow, AuditEventRow
from tests.conftest import NOW, add_test_client, fixture_bytes, task_of

EVERY_PAGE = {"cas:operate", "reports:read", "outbox:read", "outbox:operate", "audit:read", "messages:read"}


@pytest.fixture
def browser(app: Any) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, base_url="http://localhost") as client:
        yield client


def sign_in(browser: TestClient, key: str, next_page: str = "/console/") -> Any:
    form = browser.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return browser.post("/console/sign-in", data={"csrf": token, "api_key": key, "next": next_page}, follow_redirects=False)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def test_pages_need_a_signed_in_session_and_send_the_browser_to_sign_in(browser: TestClient) -> None:
    answer = browser.get("/console/queue", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in?next=/console/queue"
    assert browser.get("/console/sign-in").status_code == 200
    assert browser.get("/console/static/nhsuk/nhsuk-frontend.min.css").status_code == 200  # public, like /docs


def test_sign_in_sets_an_httponly_strict_session_cookie_and_opens_every_page(app: Any, browser: TestClient) -> None:
    answer = sign_in(browser, add_test_client(app, EVERY_PAGE), "/console/letters")
    assert answer.status_code == 303 and answer.headers["location"] == "/console/letters"
    cookie = next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("iap_console="))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie and "Secure" not in cookie
    for path in ("/console/", "/console/queue", "/console/letters", "/console/waitlist", "/console/audit", "/console/messages"):
        page = browser.get(path)
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store", path
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]


def test_the_cookie_is_secure_off_localhost_and_an_access_token_or_a_wrong_key_signs_no_one_in(app: Any) -> None:
    with TestClient(app, base_url="https://console.trust.example") as remote:
        answer = sign_in(remote, add_test_client(app, EVERY_PAGE))
        assert "Secure" in next(v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("iap_console="))
        assert sign_in(remote, "iapt_an-access-token").status_code == 401
        assert sign_in(remote, "iapk_0123456789abcdef_wrong").status_code == 401


def test_a_form_without_its_csrf_token_is_refused(app: Any, browser: TestClient) -> None:
    key = add_test_client(app, EVERY_PAGE)
    form = browser.get("/console/sign-in")
    assert browser.post("/console/sign-in", data={"api_key": key, "csrf": "forged"}).status_code == 403  # sign-in's own token
    assert "iap_console" not in browser.cookies
    assert sign_in(browser, key).status_code == 303 and form.status_code == 200
    refused = browser.post("/console/letters/any-delivery/replay", data={"csrf": "not-the-session-token"})
    assert refused.status_code == 403 and "token is missing or stale" in refused.text


def test_a_session_ends_when_idle_signed_out_or_its_client_revoked(app: Any, clock: FixedClock, browser: TestClient) -> None:
    name = "console-person"
    assert sign_in(browser, add_test_client(app, EVERY_PAGE, name=name)).status_code == 303
    clock.set(NOW + timedelta(minutes=app.state.settings.console_idle_minutes - 1))
    assert browser.get("/console/queue").status_code == 200  # used: the idle time starts again
    clock.set(clock.now() + timedelta(minutes=app.state.settings.console_idle_minutes))
    assert browser.get("/console/queue", follow_redirects=False).status_code == 303
    assert sign_in(browser, add_test_client(app, EVERY_PAGE, name=name + "-2")).status_code == 303
    page = browser.get("/console/queue")
    kept = browser.cookies["iap_console"]
    assert browser.post("/console/sign-out", data={"csrf": csrf_of(page.text)}, follow_redirects=False).status_code == 303
    copy = {"Cookie": f"iap_console={kept}"}  # a copy of the cookie opens nothing
    assert browser.get("/console/queue", headers=copy, follow_redirects=False).status_code == 303
    assert sign_in(browser, add_test_client(app, EVERY_PAGE, name=name + "-3")).status_code == 303
    with app.state.sessions.begin() as session:
        revoke_client(session, name + "-3", clock.now())
    assert browser.get("/console/queue", follow_redirects=False).status_code == 303


def test_two_replicas_serve_the_same_session_and_the_same_page(app: Any, settings: Any, clock: FixedClock, client: Any) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    other = create_app(settings, clock)  # a second instance on the same database
    try:
        with TestClient(app, base_url="http://localhost") as first, TestClient(other, base_url="http://localhost") as second:
            assert sign_in(first, add_test_client(app, EVERY_PAGE)).status_code == 303
            cookie = {"Cookie": f"iap_console={first.cookies['iap_console']}"}
            pages = [browser.get(f"/console/cases/{task['id']}", headers=cookie, follow_redirects=False) for browser in (first, second)]
            assert [p.status_code for p in pages] == [200, 200]
            assert _main(pages[0].text) == _main(pages[1].text)
    finally:
        other.state.engine.dispose()


def _main(html: str) -> str:
    return html.split('id="maincontent"', 1)[1].split("</main>", 1)[0]


def test_pages_follow_the_scope_table_default_deny_included(app: Any, browser: TestClient) -> None:
    assert sign_in(browser, add_test_client(app, {"cas:operate"})).status_code == 303
    assert browser.get("/console/queue").status_code == 200
    for path in ("/console/letters", "/console/audit", "/console/waitlist", "/console/messages", "/console/no-such-page"):
        refused = browser.get(path)
        assert refused.status_code == 403 and "You may not see this page" in refused.text, path
    assert "/console/letters" not in browser.get("/console/").text  # the menu and the dashboard hold only what is allowed


def test_the_raw_body_of_a_message_needs_messages_raw(app: Any, client: Any, browser: TestClient) -> None:
    client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json"))
    assert sign_in(browser, add_test_client(app, EVERY_PAGE)).status_code == 303
    key = re.search(r'data-key="(in-\d+)"', browser.get("/console/messages").text).group(1)  # type: ignore[union-attr]
    assert "lacks <code>messages:raw</code>" in browser.get(f"/console/messages/{key}").text
    assert browser.get(f"/console/messages/{key}/raw").status_code == 403


def test_a_bound_key_sees_its_own_service_only(app: Any, client: Any, browser: TestClient) -> None:
    bnssg = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    bsw = task_of(client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json")).json())
    assert sign_in(browser, add_test_client(app, EVERY_PAGE, service="bsw")).status_code == 303
    queue = browser.get("/console/queue").text
    assert bsw["id"][:8] in queue and bnssg["id"][:8] not in queue
    assert browser.get(f"/console/cases/{bnssg['id']}").status_code == 404  # as for a case never stored
    assert browser.get("/console/queue?service=bnssg").status_code == 403
    assert browser.get(f"/console/cases/{bsw['id']}").status_code == 200


def test_a_page_showing_a_case_is_audited_naming_its_patient(app: Any, client: Any, browser: TestClient) -> None:
    task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
    assert sign_in(browser, add_test_client(app, EVERY_PAGE, name="auditor-person")).status_code == 303
    assert browser.get(f"/console/cases/{task['id']}").status_code == 200
    with app.state.sessions() as session:
        events = session.execute(
            select(AuditEventRow.id).join(AuditEntityRow, AuditEntityRow.event_id == AuditEventRow.id)
            .where(AuditEntityRow.reference == task["for"]["reference"])
        ).scalars().all()  # fmt: skip
    viewed = [client.get(f"/fhir/AuditEvent/{event}").json() for event in events]
    mine = [e for e in viewed if e["agent"][0]["who"].get("display") == "auditor-person"]
    assert len(mine) == 1 and mine[0]["entity"][-1]["description"] == f"GET /console/cases/{task['id']}"
    signed_in = client.get("/fhir/AuditEvent", params={"subtype": "110122"}).json()
    assert any(e["resource"]["agent"][0]["who"].get("display") == "auditor-person" for e in signed_in.get("entry", []))


def test_a_key_bound_to_a_pathway_service_opens_every_page_and_is_told_it_has_no_cas_queue(app: Any, browser: TestClient) -> None:
    assert sign_in(browser, add_test_client(app, EVERY_PAGE | {"messages:raw"}, service="north-essex-mid")).status_code == 303
    for path in (
        "/console/",
        "/console/queue",
        "/console/letters",
        "/console/waitlist",
        "/console/audit",
        "/console/messages",
        "/console/quarantine",
    ):
        assert browser.get(path).status_code == 200, path
    assert "which is not a CAS service" in browser.get("/console/queue").text
    assert browser.get("/console/queue?service=bnssg").status_code == 403  # asking for another service is still refused
