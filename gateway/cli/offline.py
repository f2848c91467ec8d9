"""`iap-gateway map` and `score`: what an input becomes, printed, with no server and no database."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import print_offline

app = typer.Typer()


@app.command("map")
def map_file(
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, readable=True, help="A 111 case JSON, a BaRS message Bundle or (--mhpl) an MHPL call."),
    ],
    received_at: Annotated[str | None, typer.Option(help="Receipt time to use (ISO 8601 with offset); default now.")] = None,
    mhpl: Annotated[bool, typer.Option("--mhpl", help="The file is an MHPL call (docs/formats/mhpl-call.md).")] = False,
) -> None:
    """Print the FHIR Bundle a given input becomes (no server, no database)."""
    from gateway.cas.intake import CHANNEL_MHPL, map_offline
    from gateway.cas.rules.schema import load_rules
    from gateway.platform.settings import Settings

    rules = load_rules(Settings().rules_dir)
    kind = CHANNEL_MHPL if mhpl else None
    print_offline(lambda moment: map_offline(file.read_bytes(), rules, moment, kind), received_at)


@app.command()
def score(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A QuestionnaireResponse (FHIR JSON).")],
    received_at: Annotated[str | None, typer.Option(help="Time to use (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Print, as a FHIR Bundle, the resources the gateway would store for a QuestionnaireResponse (no server)."""
    from fhir_mapping.measures import load_measures
    from gateway.measures.responses import score_offline

    catalogue = load_measures()
    print_offline(lambda moment: score_offline(file.read_bytes(), catalogue, moment), received_at)
