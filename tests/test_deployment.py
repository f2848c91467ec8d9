"""The deployment files and the README say what the code does (there is no Docker engine here to run them).

docker-compose.yml: two gateway replicas, PostgreSQL, the MESH sandbox, a proxy; every IAP_ setting it
sets is a real setting; no secret in the file. The README's configuration table and docs/operations.md name every
setting; docs/security.md every scope and every row of the scope table.
"""

from __future__ import annotations

import re

import yaml

from gateway.platform.security.scopes import ROUTES, SCOPES
from gateway.platform.settings import Settings
from tests.conftest import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
SECURITY = (ROOT / "docs" / "security.md").read_text()
SETTINGS = {f"IAP_{name.upper()}" for name in Settings.model_fields} - {"IAP_DATABASE_URL"}


def test_compose_runs_two_gateway_replicas_on_one_postgresql_with_the_mesh_sandbox() -> None:
    services = COMPOSE["services"]
    assert set(services) == {"db", "migrate", "gateway", "proxy", "mesh"}
    gateway = services["gateway"]
    assert gateway["deploy"]["replicas"] == 2
    assert services["db"]["image"].startswith("postgres:")
    assert gateway["environment"]["DATABASE_URL"].endswith("@db:5432/iap_gateway")
    assert gateway["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])
    assert "ports" not in gateway  # only the proxy is reachable
    mesh = (ROOT / "deploy" / "mesh-sandbox.Dockerfile").read_text()
    research = (ROOT.parent / "shared" / "research" / "mesh-sandbox.md").read_text()
    version = re.search(r"mesh-sandbox==([\d.]+)", mesh)
    assert version and f"mesh-sandbox=={version.group(1)}" in research


def test_compose_sets_only_real_settings_and_holds_no_secret() -> None:
    for name, service in COMPOSE["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("IAP_"):
                assert key in SETTINGS, (name, key)
            if "PASSWORD" in key or "KEY" in key:
                assert str(value).startswith("${"), (name, key)
    text = (ROOT / "docker-compose.yml").read_text()
    assert "iap-local-only" not in text and ":?set POSTGRES_PASSWORD" in text


def test_the_compose_header_and_the_deployment_page_list_the_same_required_secrets_compose_demands() -> None:
    """One list: every `${VAR:?...}` compose refuses to start without, named in its header and in docs/deployment.md."""
    text = (ROOT / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required == {"POSTGRES_PASSWORD", "IAP_MESH_PASSWORD", "MESH_SHARED_KEY"}
    header = text.split("\nservices:", 1)[0]
    listed = set(re.findall(r"^#   ([A-Z_]+)   ", header, re.M))
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    table = deployment.split("## Required secrets", 1)[1].split("\n## ", 1)[0]
    assert listed == required == set(re.findall(r"^\| `([A-Z_]+)` \|", table, re.M))
    exports = [line for line in (header + deployment).splitlines() if "export " in line]
    assert exports and all(set(re.findall(r"(\w+)='", line)) == required for line in exports)


def test_the_proxy_balances_http_and_mllp_over_the_replicas_and_keeps_the_gateways_limits() -> None:
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert "server gateway:8080;" in nginx and "server gateway:2575;" in nginx
    assert "access_log off;" in nginx  # a request line can hold an identifier
    limit = Settings.model_fields["max_body_bytes"].default
    assert f"client_max_body_size {limit // 1_048_576}m;" in nginx
    assert f"client_body_timeout {int(Settings.model_fields['body_timeout_seconds'].default)}s;" in nginx


def test_the_docs_document_every_setting_and_every_scope() -> None:
    for name in SETTINGS:
        assert f"`{name}`" in README, f"{name}: add it to the README's configuration table"
        assert f"`{name}`" in OPERATIONS, f"{name}: add it to docs/operations.md's configuration table"
    for scope in SCOPES:
        assert f"`{scope}`" in SECURITY, f"{scope}: add it to docs/security.md"
    table = SECURITY.split("## The scope table", 1)[1].split("\n## ", 1)[0]
    for rule in ROUTES:
        assert all(f"`{scope}`" in table for scope in rule.scopes), f"{rule.pattern}: docs/security.md's scope table"
        first = rule.pattern.split("/**")[0]
        assert first in table, f"{rule.pattern}: add it to docs/security.md's scope table"


def test_the_dockerfile_runs_as_a_user_not_root() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER iap$", dockerfile, re.M) and "EXPOSE 8080 2575" in dockerfile
