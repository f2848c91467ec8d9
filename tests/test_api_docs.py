"""The API description as a newcomer meets it: /docs and /redoc served whole by the gateway (no CDN: they must work on
HSCN), and every route taking a body described with an example that the route takes (issue 35)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from gateway.api.examples import CAS_OPERATION_EXAMPLES, EPISODE_OPERATION_EXAMPLES, RISK_LEVEL_EXAMPLE, fixtures_dir, parameters
from tests.conftest import FIXTURES, task_of


class _Assets(HTMLParser):
    """Every URL a browser would fetch for the page: script src, link href, img src."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "link": "href", "img": "src"}.get(tag)
        self.urls += [value for name, value in attrs if name == wanted and value]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_api_docs_load_every_asset_from_the_gateway_itself(anonymous: Any, page: str) -> None:
    """No credential needed, and nothing fetched from a CDN or font service: the page is whole on a closed network."""
    reply = anonymous.get(page)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
    parser = _Assets()
    parser.feed(reply.text)
    assert len(parser.urls) >= 2, parser.urls  # the favicon and the bundle (and Swagger UI's CSS)
    assert "http://" not in reply.text and "https://" not in reply.text  # no absolute URL at all, in tags or the inline script
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = anonymous.get(url)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
        if url.endswith(".css"):  # its images are inline
            assert all(ref.strip("'\"").startswith("data:") for ref in re.findall(r"url\(([^)]*)\)", asset.text)), url
    assert anonymous.get("/openapi.json").status_code == 200  # what the page then loads, from the gateway too


def test_every_route_taking_a_body_has_a_description_and_an_example(anonymous: Any) -> None:
    schema = anonymous.get("/openapi.json").json()
    taking = [(path, method, op) for path, ops in schema["paths"].items() for method, op in ops.items() if "requestBody" in op]
    assert len(taking) >= 14
    for path, method, operation in taking:
        assert len(operation.get("description") or "") > 60, f"{method} {path}"
        if path == "/oauth2/token":  # a form whose fields its schema describes; a signed assertion cannot be an example
            continue
        for media, content in operation["requestBody"]["content"].items():
            assert "example" in content or "examples" in content, f"{method} {path} ({media})"


@pytest.mark.parametrize(
    ("path", "fixture"),
    [
        ("/ingest/nhs111", "nhs111/option2-standard.case.json"),
        ("/ingest/mhpl", "mhpl/police-call.mhpl.json"),
        ("/ingest/hl7v2", "rio/adt-a04-register.hl7"),
        ("/ingest/pcmis", "pcmis/contacts.csv"),
        ("/ingest/systmone", "systmone/contacts.csv"),
        ("/fhir/$process-message", "nhs111/bars-dx13-self-harm-flag.bundle.json"),
        ("/fhir/ServiceRequest/$route", "pathways/tt-gp-referral-step-3.servicerequest.json"),
        ("/fhir/QuestionnaireResponse", "measures/phq-9-lhc-forms.qr.json"),
    ],
)
def test_an_ingest_routes_example_is_its_fixture_as_it_is(anonymous: Any, path: str, fixture: str) -> None:
    (content,) = anonymous.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]["content"].values()
    text = (fixtures_dir() / fixture).read_text()
    assert content["example"] == (json.loads(text) if fixture.endswith(".json") else text)


def _post(client: Any, path: str, body: dict[str, Any]) -> Any:
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/fhir+json"})


def test_each_cas_operations_example_is_taken_by_the_operation_CAS_07_CAS_11_CAS_12_CAS_13_CAS_16(client: Any) -> None:
    case = task_of(client.post("/ingest/nhs111", content=(FIXTURES / "option2-standard.case.json").read_bytes()).json())["id"]
    for name in ("cn-review", "record-contact-attempt", "known-service", "end-assessment"):
        reply = _post(client, f"/fhir/Task/{case}/${name}", CAS_OPERATION_EXAMPLES[name][1])
        assert reply.status_code == 200, (name, reply.text)
    unratified = task_of(client.post("/ingest/nhs111", content=(FIXTURES / "option1-dx12.case.json").read_bytes()).json())["id"]
    consultation = parameters(registered=False, practitioner="N Unregistered", notes="Seen.")
    assert _post(client, f"/fhir/Task/{unratified}/$end-assessment", consultation).status_code == 200
    reply = _post(client, f"/fhir/Task/{unratified}/$ratify", CAS_OPERATION_EXAMPLES["ratify"][1])
    assert reply.status_code == 200 and reply.json()["status"] == "completed", reply.text
    assert _post(client, "/queue/$confirm-risk-level", RISK_LEVEL_EXAMPLE).status_code == 201


def test_each_episode_operations_example_is_taken_by_the_operation_TT_08_TT_10_TT_14_TT_17(client: Any) -> None:
    referral = json.loads((fixtures_dir() / "pathways/tt-gp-referral-step-3.servicerequest.json").read_text())
    decision = _post(client, "/fhir/ServiceRequest/$route", referral).json()
    episode = next(p["valueReference"]["reference"] for p in decision["parameter"] if p["name"] == "episode")
    for name in ("record-booking-attempt", "record-contact", "allocate", "kit-opt-out", "progress-letter", "step"):
        reply = _post(client, f"/fhir/{episode}/${name}", EPISODE_OPERATION_EXAMPLES[name][1])
        assert reply.status_code == 200, (name, reply.text)
