"""The operator console in a real headless Chromium (Debian's `chromium`, driven by Playwright; issue 36).

The gateway runs as a real server (uvicorn on a free port, a temporary SQLite file, the delivery worker on); the
browser signs in with an API key as a person would, and every page it opens is checked with axe-core (vendored under
tests/vendor/axe-core, MPL-2.0) for serious or critical accessibility violations. Screenshots of each page go to
the run's artifacts folder (IAP_TEST_ARTIFACTS, else a temporary folder) and, with IAP_CONSOLE_SCREENSHOTS_TO_DOCS=1,
to docs/console/.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from gateway.api.app import create_app
from gateway.platform.clock import FixedClock
from tests.conftest import NOW, ROOT, add_test_client, bearer, fixture_bytes, gateway_settings, serving, task_of
from tests.letter_helpers import completed_case, write_routing

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by .ci/run (never `playwright install`)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = (ROOT / "tests" / "vendor" / "axe-core" / "axe.min.js").read_text()
ARTIFACTS = Path(os.environ.get("IAP_TEST_ARTIFACTS") or tempfile.mkdtemp(prefix="iap-console-")) / "console"
DOCS = ROOT / "docs" / "console"
EVERY_SCOPE_BUT_ADMIN = {
    "cas:operate", "fhir:read", "reports:read", "outbox:read", "outbox:operate", "audit:read", "messages:read", "messages:raw",
    "ingest:nhs111",
}  # fmt: skip


class _Receiver(BaseHTTPRequestHandler):
    """A GP practice's FHIR endpoint: down (503) until `up` is set, then it takes each document (201)."""

    up = threading.Event()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(201 if self.up.is_set() else 503)
        self.send_header("Location", "Bundle/received-1")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@dataclass
class Console:
    url: str
    app: Any
    system_key: str  # a sender (ingest) with every scope, for the API side
    operator_key: str  # a person: every page
    cas_key: str  # a person who may see the CAS pages only
    bsw_key: str  # a person bound to the bsw service


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    folder = tmp_path_factory.mktemp("console")
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    routing = write_routing(folder, fhir_endpoints={"L81001": f"http://127.0.0.1:{receiver.server_address[1]}/fhir"})
    settings = gateway_settings(
        f"sqlite:///{folder}/console.db", routing_file=routing, deliver_seconds=1, outbox_max_attempts=1, outbox_backoff_seconds=1
    )
    app = create_app(settings, FixedClock(NOW))
    keys = (
        add_test_client(app, EVERY_SCOPE_BUT_ADMIN | {"letters:write", "ingest:referral"}, name="system"),
        add_test_client(app, EVERY_SCOPE_BUT_ADMIN, name="operator.one"),
        add_test_client(app, {"cas:operate"}, name="cas.desk"),
        add_test_client(app, {"cas:operate"}, service="bsw", name="bsw.desk"),
    )
    with serving(app) as url:
        yield Console(url, app, *keys)
    receiver.shutdown()
    receiver.server_close()
    app.state.engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})  # bypass: to inject axe-core
    yield context.new_page()
    context.close()


def sign_in(page: Page, console: Console, key: str) -> None:
    page.goto(f"{console.url}/console/")
    assert page.url.endswith("/console/sign-in?next=/console/")
    page.fill("#api-key", key)
    page.click("button[type=submit]")
    assert page.url == f"{console.url}/console/", page.url


def accessible(page: Page, name: str) -> None:
    """No serious or critical axe-core violation on the page (WCAG 2.2 AA rules); a screenshot of it as an artifact."""
    page.add_script_tag(content=AXE)
    result = page.evaluate("axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})")
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if os.environ.get("IAP_CONSOLE_SCREENSHOTS_TO_DOCS") == "1":
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
    assert bad == [], (name, bad)


def api(console: Console) -> httpx.Client:
    return httpx.Client(base_url=console.url, headers=bearer(console.system_key), timeout=30)


def test_sign_in_with_an_api_key_then_every_page_is_accessible(console: Console, page: Page) -> None:
    page.goto(f"{console.url}/console/sign-in")
    accessible(page, "sign-in")
    page.fill("#api-key", "iapk_not_a_key")
    page.click("button[type=submit]")
    assert "Enter a valid API key" in page.content()
    sign_in(page, console, console.operator_key)
    assert "Signed in as operator.one" in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "iap_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    accessible(page, "dashboard")
    for path, name in (
        ("/console/queue", "queue"),
        ("/console/waitlist", "waitlist"),
        ("/console/letters", "letters"),
        ("/console/audit", "audit"),
    ):
        page.goto(console.url + path)
        assert page.locator("h1").first.is_visible()
        accessible(page, name)


def _count(page: Page, row: str, what: str) -> int:
    return int(page.locator(f"tr[data-channel='{row}'] td[data-count='{what}'] a").inner_text().split()[0])


def test_dashboard_numbers_change_after_a_referral_and_a_refused_message(console: Console, page: Page) -> None:
    sign_in(page, console, console.operator_key)
    accepted, refused = _count(page, "nhs111-case-http", "accepted"), _count(page, "nhs111-case-http", "refused")
    open_cases = int(page.locator("tr[data-service='bsw'] td[data-count='open'] a").inner_text().split()[0])
    with api(console) as client:
        assert client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json")).status_code == 201
        broken = json.loads(fixture_bytes("option2-standard.case.json")) | {"case_id": "NHS111-CONSOLE-REFUSED-1"}
        del broken["call_time"]
        assert client.post("/ingest/nhs111", content=json.dumps(broken)).status_code == 400
        referral = (ROOT / "fixtures" / "pathways" / "tt-gp-referral-step-3.servicerequest.json").read_bytes()
        assert client.post("/fhir/ServiceRequest/$route", content=referral).status_code == 201
    page.reload()
    assert _count(page, "pathway-referral-http", "accepted") == 1
    assert _count(page, "nhs111-case-http", "accepted") == accepted + 1
    assert _count(page, "nhs111-case-http", "refused") == refused + 1
    assert int(page.locator("tr[data-service='bsw'] td[data-count='open'] a").inner_text().split()[0]) == open_cases + 1
    accessible(page, "dashboard")
    page.goto(f"{console.url}/console/waitlist")
    assert page.locator("svg.console-chart").count() >= 2  # drawn in the page: no image round trip
    accessible(page, "waitlist")
    page.goto(f"{console.url}/console/")
    page.click("tr[data-channel='nhs111-case-http'] td[data-count='refused'] a")  # each number opens the list behind it
    assert page.url.startswith(f"{console.url}/console/quarantine?channel=nhs111-case")
    accessible(page, "quarantine")
    page.locator("#message-log tbody tr a").first.click()
    assert "call_time" in page.locator("#problems").inner_text()  # the problems found, kept with the refusal
    accessible(page, "message-refused")


def test_follow_a_message_from_the_log_to_its_task_and_its_explain(console: Console, page: Page) -> None:
    with api(console) as client:
        task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    sign_in(page, console, console.operator_key)
    page.goto(f"{console.url}/console/messages?channel=nhs111-case&outcome=accepted")
    accessible(page, "messages")
    page.locator("#message-log tbody tr a").first.click()  # newest first: the referral just sent
    assert page.locator(f"#resources a[href='/console/cases/{task['id']}']").count() == 1
    accessible(page, "message")
    page.click("text=Show the raw body")
    assert "case_id" in page.locator("#raw-body").inner_text()  # messages:raw: the body as received (the view audited)
    accessible(page, "message-raw")
    page.click(f"#resources a[href='/console/cases/{task['id']}#explain']")
    assert page.locator("h1").inner_text() == f"Case {task['id']}"
    assert "CAS-01" in page.locator("#explain + table").inner_text()


def test_a_case_page_shows_its_explain_and_its_letters(console: Console, page: Page) -> None:
    with api(console) as client:
        task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    sign_in(page, console, console.operator_key)
    page.goto(f"{console.url}/console/queue")
    page.click(f"a[href='/console/cases/{task['id']}']")
    assert page.locator("h1").inner_text() == f"Case {task['id']}"
    assert re.search(r"CAS-0\d", page.locator("#explain + table").inner_text())  # each decision names its rule ids
    accessible(page, "case")


def test_replay_a_dead_letter_and_see_it_sent(console: Console, page: Page) -> None:
    with api(console) as client:
        completed_case(client)  # CAS-13: the GP letter, to a practice whose endpoint is down: one attempt, dead
        dead = _wait_for(client, "dead")
    sign_in(page, console, console.operator_key)
    page.goto(f"{console.url}/console/letters?status=dead")
    row = page.locator("tr", has_text="FHIR receiver answered HTTP 503")
    assert row.count() == 1  # the reason for each dead letter, on the list
    accessible(page, "letters-dead")
    page.goto(f"{console.url}/console/letters/{dead['id']}/pdf")  # the letter's PDF, as stored
    _Receiver.up.set()
    page.goto(f"{console.url}/console/letters/{dead['id']}")
    page.click("text=Replay")
    assert "Send this letter again?" in page.content()  # the confirm step
    accessible(page, "letter-replay-confirm")
    page.click("text=Yes, send it again")
    with api(console) as client:
        sent = _wait_for(client, "delivered")
    assert sent["id"] == dead["id"]
    page.reload()
    assert "delivered" in page.locator("#delivery-status").inner_text()
    assert "by operator.one (console)" in page.content()  # who replayed it, in the delivery's history
    accessible(page, "letter")


def _wait_for(client: httpx.Client, status: str, seconds: float = 20) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        entries = client.get("/outbox", params={"status": status}).json()["entries"]
        if entries:
            return entries[0]  # type: ignore[no-any-return]
        time.sleep(0.2)
    raise AssertionError(f"no delivery became {status}")


def test_a_page_needs_its_scope(console: Console, page: Page) -> None:
    sign_in(page, console, console.cas_key)
    nav = page.locator("nav[aria-label=Menu]").inner_text()
    assert "CAS queue" in nav and "Letters" not in nav  # the menu shows only what the scope table allows
    answer = page.goto(f"{console.url}/console/letters")
    assert answer is not None and answer.status == 403
    assert "needs scope outbox:read" in page.content()
    accessible(page, "refused")


def test_a_key_bound_to_one_service_cannot_open_another_services_case(console: Console, page: Page) -> None:
    with api(console) as client:
        other = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option2-standard.case.json")).json())
        own = task_of(client.post("/ingest/nhs111", content=fixture_bytes("third-party-bsw.case.json")).json())
    sign_in(page, console, console.bsw_key)
    page.goto(f"{console.url}/console/queue")
    assert own["id"][:8] in page.content() and other["id"][:8] not in page.content()
    answer = page.goto(f"{console.url}/console/cases/{other['id']}")
    assert answer is not None and answer.status == 404
    accessible(page, "not-found")
    assert page.goto(f"{console.url}/console/cases/{own['id']}").status == 200  # type: ignore[union-attr]


def test_every_page_works_without_javascript(console: Console, browser: Browser) -> None:
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, console, console.operator_key)
        for link in ("Messages", "Quarantine", "CAS queue", "Wait list", "Letters", "Audit", "Dashboard"):
            page.click(f"nav[aria-label=Menu] >> text={link}")
            assert page.locator("h1").first.inner_text() in (link, "Dashboard"), link
        page.goto(f"{console.url}/console/audit")
        page.fill("#client", "operator.one")
        page.click("text=Search")  # a plain GET form
        assert "operator.one" in page.locator("table").inner_text()
        page.click("text=Sign out")  # a plain POST form, with its CSRF token
        assert page.url.startswith(f"{console.url}/console/sign-in")
        page.goto(f"{console.url}/console/queue")
        assert "/console/sign-in" in page.url  # signed out: the session is gone
    finally:
        context.close()


def test_preview_a_rule_change_on_stored_traffic_and_download_its_csv_CAS_05(console: Console, page: Page, tmp_path: Path) -> None:
    from gateway.cas.rules.schema import DEFAULT_RULES_DIR

    with api(console) as client:
        task = task_of(client.post("/ingest/nhs111", content=fixture_bytes("option1-dx12.case.json")).json())
    live = (DEFAULT_RULES_DIR / "bnssg.yaml").read_text(encoding="utf-8")
    candidate = tmp_path / "bnssg.yaml"  # the Dx12 window shortened: every stored Dx12 case's breach time moves
    candidate.write_text(
        live.replace('version: "2026.12.3"', 'version: "2026.12.99"').replace("Dx12:  {within: PT2H,", "Dx12:  {within: PT1H,")
    )
    page.goto(f"{console.url}/console/")
    page.fill("#api-key", add_test_client(console.app, {"rules:preview"}, name="rules.manager"))
    page.click("button[type=submit]")
    page.click("nav[aria-label=Menu] >> text=Rules")
    page.set_input_files("#upload", str(candidate))
    page.click("button:has-text('Preview')")
    assert f"Task/{task['id']}" in page.locator("#changed-cases").inner_text()
    accessible(page, "rules")
    with page.expect_download() as download:
        page.click("button:has-text('Download CSV')")
    assert f"Task/{task['id']}" in Path(download.value.path()).read_text(encoding="utf-8")
