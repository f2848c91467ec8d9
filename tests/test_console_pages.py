"""The operator console over HTTP (issue 36): sign-in, sessions, CSRF, the scope table and service binding on pages,
audit of page views. The browser tests (tests/test_console_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import re
from typing import Any

from fastapi.testclient import TestClient

from tests.conftest import ALL_SCOPES, add_test_client


def _browser(app: Any) -> TestClient:
    return TestClient(app, raise_server_exceptions=True, base_url="http://localhost")


def _sign_in(browser: TestClient, key: str) -> Any:
    form = browser.get("/console/sign-in")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    return browser.post("/console/sign-in", data={"csrf": token, "api_key": key, "next": "/console/"}, follow_redirects=False)


def test_pages_need_a_signed_in_session_and_send_the_browser_to_sign_in(app: Any) -> None:
    with _browser(app) as browser:
        answer = browser.get("/console/queue", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/sign-in?next=/console/queue"
        assert browser.get("/console/sign-in").status_code == 200


def test_sign_in_sets_an_httponly_strict_cookie_and_opens_the_dashboard(app: Any) -> None:
    key = add_test_client(app, ALL_SCOPES)
    with _browser(app) as browser:
        answer = _sign_in(browser, key)
        assert answer.status_code == 303, answer.text
        cookie = [v for k, v in answer.headers.multi_items() if k == "set-cookie" and v.startswith("iap_console=")][0]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
        page = browser.get("/console/")
        assert page.status_code == 200 and "Dashboard" in page.text
        for path in ("/console/queue", "/console/letters", "/console/waitlist", "/console/audit"):
            assert browser.get(path).status_code == 200, path
