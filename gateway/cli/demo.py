"""`iap-gateway demo`, and the demo fixtures, settings and credential `serve --demo` loads.

A newcomer's first run: quiet (logs at WARNING unless IAP_LOG_LEVEL says otherwise), a progress bar while the
demo loads, then one block ending with the line to paste. The demo configures what it needs so nothing it makes
fails: a print folder under the data directory for the clients' copies of letters, and no remote delivery target
(no MESH), so every demo letter is delivered to that folder.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from adapters.problems import GatewayInputError
from gateway.api.examples import fixtures_dir  # IAP_FIXTURES_DIR, the repo's fixtures/, or ./fixtures (the image)

app = typer.Typer()

DEMO_CLIENT = "demo-operator"
DEMO_PRINT_FOLDER = "demo-print"


def data_dir(database_url: str) -> Path:
    """Where the demo keeps its files: the SQLite database's folder, else (PostgreSQL, in memory) the working folder."""
    from sqlalchemy.engine import make_url

    from gateway.platform.store.database_url import normalise_database_url

    url = make_url(normalise_database_url(database_url))
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return Path(url.database).resolve().parent
    return Path.cwd()


def demo_settings(settings: Any | None = None) -> Any:
    """Settings for the demo: the environment's, plus a print folder under the data directory (unless IAP_PRINT_DIR is
    set), no MESH, and logs at WARNING (unless IAP_LOG_LEVEL is set)."""
    from gateway.platform.settings import Settings

    settings = settings or Settings()
    updates: dict[str, Any] = {"mesh_url": None}
    if settings.print_dir is None:
        updates["print_dir"] = data_dir(settings.database_url) / DEMO_PRINT_FOLDER
    if "log_level" not in settings.model_fields_set:
        updates["log_level"] = "WARNING"
    return settings.model_copy(update=updates)


@app.command()
def demo() -> None:
    """Load the demo: CAS cases (fixtures/nhs111, fixtures/mhpl) spread over the breach colours, and a Talking
    Therapies wait list, through the same intake as HTTP."""
    from gateway.api.app import create_app

    loaded = load_demo(create_app(demo_settings()))
    typer.echo(loaded.summary(), err=True)


# the demo wait list's first referral (gateway.pathways.demo: its identifier system and `demo-tt-000`), as the intake keys it
_FIRST_DEMO_REFERRAL = "https://referrals.example.nhs.uk/id|demo-tt-000"


@dataclass
class DemoLoaded:
    cases: int = 0
    already: int = 0  # loaded by an earlier run into this database
    colours: Counter[str] = field(default_factory=Counter)
    referrals: int = 0
    refused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        from gateway.cas.demo_cases import COLOURS

        spread = ", ".join(f"{self.colours[c]} {c}" for c in COLOURS if self.colours[c])
        cases = f"{self.cases} new CAS case(s)" + (f" ({spread})" if spread else "")
        earlier = f"; {self.already} loaded earlier (delete the database for a fresh demo)" if self.already else ""
        return f"demo: {cases}{earlier}; {self.referrals} new Talking Therapies referral(s) on the wait list"


def load_demo(application: Any) -> DemoLoaded:
    """Send the demo's cases and wait list through the intake, with a progress bar; re-running is harmless (re-sends
    store nothing new)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from gateway.cas.demo_cases import demo_case, demo_case_files
    from gateway.pathways.demo import load_demo_waitlist
    from gateway.pathways.service import CHANNEL_PATHWAY
    from gateway.platform.messages import previous

    state = application.state
    now = state.clock.now()
    files = demo_case_files(fixtures_dir())
    if not files:
        raise typer.BadParameter(f"no demo fixtures at {fixtures_dir()} (set IAP_FIXTURES_DIR)")
    loaded = DemoLoaded()
    columns = (TextColumn("{task.description:<30}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        cases = progress.add_task("CAS cases", total=len(files))
        for index, path in enumerate(files):
            case = demo_case(path, index, state.registry, now)
            if case.stored(state.sessions):
                loaded.already += 1
            else:
                try:
                    case.send(state.intake)
                except GatewayInputError as exc:
                    loaded.refused.append(f"{path.name}: {exc}")
                else:
                    loaded.cases += 1
                    loaded.colours[case.colour] += 1
            progress.advance(cases)
        waitlist = progress.add_task("Talking Therapies wait list", total=1)
        if previous(state.sessions, CHANNEL_PATHWAY, _FIRST_DEMO_REFERRAL) is None:  # else loaded before: left to age
            loaded.referrals = load_demo_waitlist(state, now)
        state.pathways.tick(now)
        progress.advance(waitlist)
    for refusal in loaded.refused:  # a fixture the rules no longer take: said, not hidden
        typer.echo(f"demo: refused {refusal}", err=True)
    return loaded


def demo_credential(application: Any) -> str:
    """A demo operator client (every scope but admin) with a fresh API key; the key, to print once."""
    from gateway.platform.security.clients import ClientError, add_client, rotate_api_key
    from gateway.platform.security.scopes import ADMIN, SCOPES

    state = application.state
    key: str | None
    with state.sessions.begin() as session:
        try:
            key = rotate_api_key(session, DEMO_CLIENT)
        except ClientError:
            _, key = add_client(session, DEMO_CLIENT, frozenset(SCOPES) - {ADMIN}, state.clock.now())
    assert key is not None
    return key


def ready_block(loaded: DemoLoaded, base_url: str, print_dir: Path, key: str) -> str:
    """What `serve --demo` prints once it is ready: where to look, and last the line to paste."""
    return "\n".join(
        (
            "",
            f"IAP gateway demo on {base_url}",
            f"  {loaded.summary().removeprefix('demo: ')}",
            f"  queue:     {base_url}/queue",
            f"  API docs:  {base_url}/docs",
            f"  letters:   {print_dir} (the clients' copies, as PDFs)",
            f'  try:       curl -s -H "Authorization: Bearer $IAP_TOKEN" {base_url}/queue',
            "Your demo key (every scope but admin; a new one each start):",
            f"export IAP_TOKEN={key}",
        )
    )
