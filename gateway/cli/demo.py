"""`iap-gateway demo`, and the demo fixtures and credential `serve --demo` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from adapters.problems import GatewayInputError

app = typer.Typer()

DEMO_CLIENT = "demo-operator"


def fixtures_dir() -> Path:
    """IAP_FIXTURES_DIR, else the repo's fixtures/ (editable install), else ./fixtures (container image)."""
    import os

    configured = os.environ.get("IAP_FIXTURES_DIR")
    if configured:
        return Path(configured)
    beside_code = Path(__file__).resolve().parents[2] / "fixtures"
    return beside_code if beside_code.is_dir() else Path.cwd() / "fixtures"


@app.command()
def demo() -> None:
    """Load the demo fixtures (fixtures/nhs111) into the database, through the same intake as HTTP."""
    from gateway.api.app import create_app

    load_demo(create_app())


def demo_credential(application: Any, host: str, port: int) -> None:
    """`serve --demo`: a demo operator client (every scope but admin) with a fresh API key, printed once to the terminal."""
    from gateway.security.clients import ClientError, add_client, rotate_api_key
    from gateway.security.scopes import ADMIN, SCOPES

    state = application.state
    key: str | None
    with state.sessions.begin() as session:
        try:
            key = rotate_api_key(session, DEMO_CLIENT)
        except ClientError:
            _, key = add_client(session, DEMO_CLIENT, frozenset(SCOPES) - {ADMIN}, state.clock.now())
    typer.echo(
        f"demo operator credential (every scope but admin; shown once, a new one each start):\n"
        f"  export IAP_TOKEN={key}\n"
        f'  curl -s -H "Authorization: Bearer $IAP_TOKEN" http://{host}:{port}/queue',
        err=True,
    )


def load_demo(application: object) -> None:
    """Send every fixture input through the intake; re-running is harmless (re-sends store nothing)."""
    import uuid

    from gateway.intake import CHANNEL_BARS, Intake, detect_kind

    intake: Intake = application.state.intake  # type: ignore[attr-defined]
    loaded = 0
    folder = fixtures_dir() / "nhs111"
    if not folder.is_dir():
        raise typer.BadParameter(f"no demo fixtures at {folder} (set IAP_FIXTURES_DIR)")
    calls = sorted((fixtures_dir() / "mhpl").glob("*.json"))
    for path in [*sorted(folder.glob("*.json")), *calls]:
        raw = path.read_bytes()
        try:
            if path in calls:
                reply = intake.receive_mhpl_call(raw)
            elif detect_kind(raw) == CHANNEL_BARS:
                request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo:{path.name}"))
                reply = intake.receive_bars(raw, request_id, request_id)
            else:
                reply = intake.receive_nhs111_case(raw)
        except GatewayInputError as exc:
            typer.echo(f"demo: {path.name}: refused: {exc}", err=True)
            continue
        loaded += 0 if reply.duplicate else 1
    typer.echo(f"demo: {loaded} new case(s) loaded from {folder}", err=True)
    from gateway.pathway_demo import load_demo_waitlist

    state = application.state  # type: ignore[attr-defined]
    now = state.clock.now()
    referrals = load_demo_waitlist(state, now)
    state.pathways.tick(now)
    typer.echo(f"demo: {referrals} new Talking Therapies referral(s) on the demo wait list", err=True)
