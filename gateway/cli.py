"""The `iap-gateway` command: serve, map, score, tick, deliver, outbox, report, demo, migrate, clients."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from adapters.problems import GatewayInputError
from fhir_mapping.datetimes import parse_source_datetime
from fhir_mapping.replies import operation_outcome

app = typer.Typer(add_completion=False, no_args_is_help=True, help="IAP gateway: NHS 111 referrals -> FHIR R4 CAS queue.")
clients_app = typer.Typer(no_args_is_help=True, help="Client systems: their credentials and scopes.")
app.add_typer(clients_app, name="clients")

DEMO_CLIENT = "demo-operator"


def _fixtures_dir() -> Path:
    """IAP_FIXTURES_DIR, else the repo's fixtures/ (editable install), else ./fixtures (container image)."""
    import os

    configured = os.environ.get("IAP_FIXTURES_DIR")
    if configured:
        return Path(configured)
    beside_code = Path(__file__).resolve().parent.parent / "fixtures"
    return beside_code if beside_code.is_dir() else Path.cwd() / "fixtures"


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8080,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Load the demo fixtures before serving.")] = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="Worker processes (each its own app; share the database).")] = 1,
) -> None:
    """Run the gateway (HTTP API), on DATABASE_URL (default: SQLite file ./iap-gateway.db)."""
    import uvicorn

    from gateway.api.app import create_app, settle_heap
    from gateway.logging import uvicorn_log_config

    application = create_app()  # migrates and checks the rule files before anything listens
    if demo:
        _load_demo(application)
        _demo_credential(application, host, port)
    else:
        _hint_if_no_clients(application)
    _check_mllp_port_free(application.state.settings, workers)
    typer.echo(f"IAP gateway on http://{host}:{port}  (FHIR: /fhir/metadata, queue: /queue, API docs: /docs)", err=True)
    # no access log: a request line holds the query string, which may hold a patient identifier
    options: dict[str, Any] = dict(host=host, port=port, log_level="warning", access_log=False, log_config=uvicorn_log_config())
    if workers == 1:
        settle_heap(application.state.clock)
        uvicorn.run(application, **options)
    else:
        application.state.engine.dispose()
        uvicorn.run("gateway.api.app:served_app", factory=True, workers=workers, **options)


def _check_mllp_port_free(settings: Any, workers: int) -> None:
    """A busy MLLP port ends `serve` in one line (exit 1), as a busy HTTP port does; `--workers N` share it, no one else."""
    import os

    from gateway.mllp import SHARED_BY_WORKERS, PortInUse, check_port_free

    if settings.mllp_port <= 0:
        return
    try:
        check_port_free(settings.mllp_host, settings.mllp_port)
    except PortInUse as busy:
        typer.echo(f"iap-gateway: {busy.strerror}", err=True)
        raise typer.Exit(1) from None
    if workers > 1:
        os.environ[SHARED_BY_WORKERS] = "1"  # the workers (spawned with this environment) each listen on it, together


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
    from gateway.intake import CHANNEL_MHPL, map_offline
    from gateway.rules.schema import load_rules
    from gateway.settings import Settings

    rules = load_rules(Settings().rules_dir)
    kind = CHANNEL_MHPL if mhpl else None
    _print_offline(lambda moment: map_offline(file.read_bytes(), rules, moment, kind), received_at)


@app.command()
def score(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A QuestionnaireResponse (FHIR JSON).")],
    received_at: Annotated[str | None, typer.Option(help="Time to use (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Print, as a FHIR Bundle, the resources the gateway would store for a QuestionnaireResponse (no server)."""
    from fhir_mapping.measures import load_measures
    from gateway.responses import score_offline

    catalogue = load_measures()
    _print_offline(lambda moment: score_offline(file.read_bytes(), catalogue, moment), received_at)


@app.command()
def tick(
    now: Annotated[str | None, typer.Option(help="The time to tick at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Create the Tasks due now, once: safety calls for amber and red CAS cases (CAS-09) and pathway clocks (PC/TT);
    safe to run anywhere, any number of times."""
    from gateway.clock import SystemClock
    from gateway.rules.schema import load_rules
    from gateway.safety_calls import tick as run_tick
    from gateway.settings import Settings
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.db import migrate as run_migrations

    settings = Settings()
    engine = make_engine(settings.database_url)
    run_migrations(engine)
    moment = parse_source_datetime(now) if now else SystemClock().now()
    from fhir_mapping.measures import load_measures
    from gateway.clock import FixedClock
    from gateway.pathways import Pathways
    from gateway.rules.pathway_schema import load_pathways

    sessions = make_sessionmaker(engine)
    created = run_tick(sessions, load_rules(settings.rules_dir), moment)
    due = Pathways(sessions, load_pathways(settings.pathways_dir), load_measures(), FixedClock(moment)).tick(moment)
    typer.echo(f"tick: {len(created)} safety call(s) created; {len(due)} pathway clock Task(s) created", err=True)
    engine.dispose()


def _worker_context(now: str | None = None):  # type: ignore[no-untyped-def]
    """(engine, deliverer) on DATABASE_URL, migrated; the clock fixed at `now` when given."""
    from gateway.clock import FixedClock, SystemClock
    from gateway.outbox.worker import deliverer_from_settings
    from gateway.settings import Settings
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.db import migrate as run_migrations

    settings = Settings()
    engine = make_engine(settings.database_url)
    run_migrations(engine)
    clock = FixedClock(parse_source_datetime(now)) if now else SystemClock()
    try:
        deliverer = deliverer_from_settings(make_sessionmaker(engine), clock, settings)
    except ValueError as exc:
        engine.dispose()
        raise typer.BadParameter(str(exc)) from None
    return engine, deliverer


@app.command()
def deliver(
    now: Annotated[str | None, typer.Option(help="The time to deliver at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Send the letters that are due (MESH, FHIR push, print folder), poll acknowledgements, apply retention; once.

    Safe on several instances at once: each delivery is claimed by one worker.
    """
    engine, deliverer = _worker_context(now)
    try:
        counts = deliverer.run_pass()
    finally:
        deliverer.close()
        engine.dispose()
    typer.echo("deliver: " + ", ".join(f"{k} {v}" for k, v in counts.items()), err=True)


outbox_app = typer.Typer(no_args_is_help=True, help="The letter outbox: list, show, replay, purge.")
app.add_typer(outbox_app, name="outbox")


@outbox_app.command("list")
def outbox_list(
    status: Annotated[str | None, typer.Option(help="Comma-separated statuses, e.g. dead,failed.")] = None,
) -> None:
    """Deliveries (newest first) as JSON lines."""
    from gateway.outbox import store

    engine, deliverer = _worker_context()
    try:
        with deliverer.sessions() as session:
            rows, _ = store.list_rows(session, status.split(",") if status else None, None, 200, 0)
            for row in rows:
                typer.echo(json.dumps(store.row_json(row)))
    finally:
        deliverer.close()
        engine.dispose()


@outbox_app.command("show")
def outbox_show(delivery_id: Annotated[str, typer.Argument(help="The delivery id (GET /outbox).")]) -> None:
    """One delivery with every attempt, acknowledgement and decision."""
    from gateway.outbox import store
    from gateway.store.models import OutboxRow

    engine, deliverer = _worker_context()
    try:
        with deliverer.sessions() as session:
            row = session.get(OutboxRow, delivery_id)
            if row is None:
                raise typer.BadParameter(f"no delivery {delivery_id}")
            typer.echo(json.dumps(store.row_json(row) | {"events": store.events_json(session, row.id)}, indent=2))
    finally:
        deliverer.close()
        engine.dispose()


@outbox_app.command("replay")
def outbox_replay(
    delivery_id: Annotated[str, typer.Argument(help="The delivery id (GET /outbox?status=dead).")],
    who: Annotated[str, typer.Option(help="Who asked for the replay (recorded).")] = "iap-gateway outbox replay",
) -> None:
    """Re-send a delivery from the stored letter now (dead, failed, withheld or sent); prints its new status."""
    from gateway.outbox import store

    engine, deliverer = _worker_context()
    try:
        with deliverer.sessions.begin() as session:
            try:
                row = store.replay(session, delivery_id, who, deliverer.clock.now())
            except ValueError as exc:
                raise typer.BadParameter(str(exc)) from None
            if row is None:
                raise typer.BadParameter(f"no delivery {delivery_id}")
        outcomes = deliverer.deliver_once(only=delivery_id)
    finally:
        deliverer.close()
        engine.dispose()
    status = outcomes[0][1] if outcomes else "pending"
    typer.echo(f"replay: {delivery_id} {status}", err=True)
    if status in ("dead", "failed"):
        raise typer.Exit(code=1)


@outbox_app.command("purge")
def outbox_purge(
    now: Annotated[str | None, typer.Option(help="The time to purge at (ISO 8601 with offset); default now.")] = None,
) -> None:
    """Retention: delete delivered deliveries older than IAP_OUTBOX_RETENTION_DAYS (never failed, dead or withheld ones)."""
    from gateway.outbox import store

    engine, deliverer = _worker_context(now)
    try:
        with deliverer.sessions.begin() as session:
            purged = store.purge(session, deliverer.clock.now() - deliverer.retention)
    finally:
        deliverer.close()
        engine.dispose()
    typer.echo(f"purge: {purged} delivered row(s) deleted", err=True)


@app.command()
def demo() -> None:
    """Load the demo fixtures (fixtures/nhs111) into the database, through the same intake as HTTP."""
    from gateway.api.app import create_app

    _load_demo(create_app())


practices_app = typer.Typer(no_args_is_help=True, help="The GP practice directory (NHS England ODS epraccur.csv).")
app.add_typer(practices_app, name="practices")


@practices_app.command("load")
def practices_load(path: Annotated[Path, typer.Argument(help="An epraccur.csv (ODS GP practices); run again to refresh.")]) -> None:
    """Load or refresh the GP practice directory that letters to a practice are addressed from (issue 34)."""
    from adapters.epraccur import read_epraccur
    from gateway.clock import SystemClock
    from gateway.outbox.practices import load_practices

    practices, problems = read_epraccur(path.read_bytes())
    for problem in problems[:20]:
        typer.echo(f"skipped: {problem}", err=True)
    with _store() as sessions, sessions.begin() as session:
        added, updated = load_practices(session, practices, SystemClock().now())
    typer.echo(f"{len(practices)} practices read: {added} added, {updated} updated, {len(problems)} skipped")


report_app = typer.Typer(no_args_is_help=True, help="Reports from the gateway's database.")
app.add_typer(report_app, name="report")


@report_app.command("waitlist")
def report_waitlist(
    plot: Annotated[Path | None, typer.Option(help="Also draw the distribution of waits against the 28/42-day lines to this PNG.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="json | csv | table")] = "table",
    service: Annotated[str | None, typer.Option(help="One pathway service id (default: all).")] = None,
    demo: Annotated[bool, typer.Option("--demo", help="Report on the demo wait list in a throw-away database.")] = False,
    now: Annotated[str | None, typer.Option(help="Report as at this time (ISO 8601 with offset); default now.")] = None,
    entered_from: Annotated[
        str | None, typer.Option("--from", help="TT-08 figures: first day of entering treatment counted (YYYY-MM-DD).")
    ] = None,
    entered_to: Annotated[
        str | None, typer.Option("--to", help="TT-08 figures: last day of entering treatment counted (YYYY-MM-DD).")
    ] = None,
) -> None:
    """The Talking Therapies wait-list snapshot (TT-08/TT-09), overdue pathway clocks and the TT-08 treatment targets;
    the same data as GET /reports/waitlist."""
    import tempfile

    from gateway.clock import FixedClock, SystemClock
    from gateway.settings import Settings
    from gateway.waitlist import plot_waitlist, reporting_period, waitlist_csv, waitlist_snapshot

    if fmt not in ("json", "csv", "table"):
        raise typer.BadParameter("--format must be json, csv or table")
    moment = parse_source_datetime(now) if now else SystemClock().now()
    try:
        period = reporting_period(entered_from, entered_to)
    except GatewayInputError as error:
        raise typer.BadParameter(f"--{error.problems[0].element}: {error.problems[0].message}") from None
    with tempfile.TemporaryDirectory() as scratch:
        scratch_db = {"DATABASE_URL": f"sqlite:///{scratch}/demo.db", "tick_seconds": 0, "mllp_port": 0}
        settings = Settings(**scratch_db) if demo else Settings()  # type: ignore[arg-type]
        from gateway.api.app import create_app

        application = create_app(settings, FixedClock(moment))
        state = application.state
        if demo:
            from gateway.pathway_demo import load_demo_waitlist

            load_demo_waitlist(state, moment)
            state.pathways.tick(moment)
        if service is not None and service not in state.pathway_rules.services:
            raise typer.BadParameter(f"unknown service; known: {sorted(state.pathway_rules.services)}")
        with state.sessions() as session:
            snapshot = waitlist_snapshot(session, state.pathway_rules, moment, service, *period)
        state.engine.dispose()
    if fmt == "json":
        sys.stdout.write(json.dumps(snapshot, indent=2) + "\n")
    elif fmt == "csv":
        sys.stdout.write(waitlist_csv(snapshot))
    else:
        sys.stdout.write(_waitlist_table(snapshot))
    if plot is not None:
        plot_waitlist(snapshot, plot)
        typer.echo(f"plot written to {plot}", err=True)


def _waitlist_table(snapshot: dict[str, Any]) -> str:
    summary = snapshot["summary"]
    lines = [f"Wait list at {snapshot['generated']}: {summary['waiting']} waiting"]
    for waiting_for in ("first-appointment", "second-appointment"):
        group, line = summary[waiting_for], snapshot["lines"].get(waiting_for, {})
        marks = ", ".join(f"{k.replace('_days', '')} {v}d" for k, v in line.items())
        lines.append(
            f"  {waiting_for:<19} {group['waiting']:>4} waiting  {group['over_target']:>4} over target  "
            f"{group['over_outer_line']:>4} over outer line  longest {group['longest_days']}d  ({marks})"
        )
    for key in ("by_locality", "by_step", "by_intervention", "by_therapist"):
        lines.append(f"  {key.removeprefix('by_')}: " + ", ".join(f"{k} {v}" for k, v in summary[key].items()))
    lines.append(f"  overdue clocks: {len(snapshot['breaches'])}")
    for service in snapshot["treatment_targets"]:
        figures = "; ".join(
            f"within {t['within_days']}d {_share(t['share'])} (target {_share(t['target_share'])}: "
            f"{'met' if t['met'] else 'not met' if t['met'] is False else 'nobody to count'})"
            for t in service["targets"]
        )
        median = f", median {service['median_days']}d" if service["median_days"] is not None else ""
        lines.append(f"  {service['rule']} {service['service']}: {service['entered_treatment']} entered treatment{median}; {figures}")
    return "\n".join(lines) + "\n"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (Alembic) on DATABASE_URL."""
    from gateway.settings import Settings
    from gateway.store.db import make_engine
    from gateway.store.db import migrate as run_migrations

    run_migrations(make_engine(Settings().database_url))
    typer.echo("database is at the newest schema", err=True)


@contextmanager
def _store() -> Iterator[Any]:
    """Sessions on DATABASE_URL, migrated first; the engine is closed afterwards."""
    from gateway.settings import Settings
    from gateway.store.db import make_engine, make_sessionmaker
    from gateway.store.db import migrate as run_migrations

    settings = Settings()
    engine = make_engine(settings.database_url)
    try:
        run_migrations(engine)
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


def _client_error(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Argument(help="A name for the client system, e.g. nhs111-provider-x, rio-bnssg.")],
    scopes: Annotated[str, typer.Option(help="Space- or comma-separated scopes (see `iap-gateway clients scopes`).")],
    service: Annotated[
        str | None, typer.Option(help="Bind the client to one CAS or pathway service (its queue, cases, episodes, CLEO, notes).")
    ] = None,
    jwks: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="Public keys (JWKS JSON) for signed JWT client assertions.")
    ] = None,
    api_key: Annotated[bool, typer.Option("--api-key/--no-api-key", help="Also issue an API key (default yes).")] = True,
) -> None:
    """Create a client. Prints its API key (or, with --no-api-key, its client id) on stdout, once; details on stderr."""
    from gateway.clock import SystemClock
    from gateway.rules.pathway_schema import load_pathways
    from gateway.rules.schema import load_rules
    from gateway.security.clients import ClientError, add_client, parse_scopes
    from gateway.settings import Settings

    try:
        granted = parse_scopes(scopes)
        if service is not None:
            settings = Settings()
            known = {*load_rules(settings.rules_dir).services, *load_pathways(settings.pathways_dir).services}
            if service not in known:
                raise ClientError(f"unknown service {service!r}; known: {sorted(known)}")
        with _store() as sessions, sessions.begin() as session:
            principal, key = add_client(
                session, name, granted, SystemClock().now(), service_id=service, jwks=jwks.read_text() if jwks else None, api_key=api_key
            )
    except (ClientError, ValueError) as error:
        raise _client_error(error) from None
    typer.echo(f"client {principal.name}: id {principal.client_id}; scopes {' '.join(sorted(principal.scopes))}", err=True)
    if service:
        typer.echo(f"bound to service {service}", err=True)
    if jwks:
        typer.echo(f"signed JWT assertions: iss = sub = {principal.client_id}, aud = <this gateway>/oauth2/token", err=True)
    if key:
        typer.echo("API key (shown once; keep it in your secret store, send it as 'Authorization: Bearer <key>'):", err=True)
    typer.echo(key or principal.client_id)


@clients_app.command("list")
def clients_list() -> None:
    """The clients: name, id, active or revoked, service, credentials, scopes (never a secret)."""
    from gateway.security.clients import list_clients

    with _store() as sessions, sessions() as session:
        for client in list_clients(session):
            kinds = [k for k, v in (("api-key", client.key_hash), ("jwt", client.jwks)) if v]
            state = "active" if client.active else "revoked"
            typer.echo(f"{client.name}\t{client.id}\t{state}\t{client.service_id or '-'}\t{','.join(kinds)}\t{client.scopes}")


@clients_app.command("revoke")
def clients_revoke(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Refuse a client from now on (its API key, its assertions and its access tokens), on every instance."""
    from gateway.clock import SystemClock
    from gateway.security.clients import ClientError, revoke_client

    try:
        with _store() as sessions, sessions.begin() as session:
            revoke_client(session, name, SystemClock().now())
    except ClientError as error:
        raise _client_error(error) from None
    typer.echo(f"client {name} revoked", err=True)


@clients_app.command("rotate-key")
def clients_rotate_key(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """A new API key for a client (printed once on stdout); the old one stops working at once."""
    from gateway.security.clients import ClientError, rotate_api_key

    try:
        with _store() as sessions, sessions.begin() as session:
            key = rotate_api_key(session, name)
    except ClientError as error:
        raise _client_error(error) from None
    typer.echo(key)


@clients_app.command("scopes")
def clients_scopes() -> None:
    """Every scope and what it allows."""
    from gateway.security.scopes import SCOPES

    for scope, meaning in SCOPES.items():
        typer.echo(f"{scope:<16} {meaning}")


def _demo_credential(application: Any, host: str, port: int) -> None:
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


def _hint_if_no_clients(application: Any) -> None:
    from gateway.security.clients import list_clients

    with application.state.sessions() as session:
        if not any(client.active for client in list_clients(session)):
            typer.echo("no clients yet: every request will get 401. Create one: iap-gateway clients add NAME --scopes ...", err=True)


def _print_offline(produce: Callable[[datetime], dict[str, Any]], received_at: str | None) -> None:
    """Print what `produce` returns as JSON, or the OperationOutcome on stderr and exit 1."""
    from gateway.clock import SystemClock

    moment = parse_source_datetime(received_at) if received_at else SystemClock().now()
    try:
        bundle = produce(moment)
    except GatewayInputError as exc:
        typer.echo(json.dumps(operation_outcome(exc.problems), indent=2), err=True)
        raise typer.Exit(code=1) from None
    sys.stdout.write(json.dumps(bundle, indent=2, ensure_ascii=False) + "\n")


def _load_demo(application: object) -> None:
    """Send every fixture input through the intake; re-running is harmless (re-sends store nothing)."""
    import uuid

    from gateway.intake import CHANNEL_BARS, Intake, detect_kind

    intake: Intake = application.state.intake  # type: ignore[attr-defined]
    loaded = 0
    folder = _fixtures_dir() / "nhs111"
    if not folder.is_dir():
        raise typer.BadParameter(f"no demo fixtures at {folder} (set IAP_FIXTURES_DIR)")
    calls = sorted((_fixtures_dir() / "mhpl").glob("*.json"))
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


# sysexits.h EX_TEMPFAIL: a temporary failure, the user is invited to retry (cron, systemd and shells read it so)
EXIT_STORE_UNAVAILABLE = 75
# sysexits.h EX_CONFIG: a configuration error; running it again will not help (systemd's RestartPreventExitStatus=78)
EXIT_STORE_MISCONFIGURED = 78


def main() -> None:
    """The `iap-gateway` command. A database error ends it with one line on stderr, not a traceback:

    - a SQLite file that cannot be used whatever the time (`gateway.store.db.sqlite_file_unusable`: its folder does
      not exist or may not be written, or it is not a SQLite database): exit 78 (EX_CONFIG: fix DATABASE_URL), naming
      the file;
    - the database unavailable (`gateway.store.db.store_unavailable`: unreachable, not there, restarting, a lock or
      statement timeout): exit 75 (EX_TEMPFAIL: run it again later), with the driver's reason (its first line: it
      names the server, the database or the timeout, never a row);
    - any other database error: exit 1, naming only its type: its message can quote the values of a row (an NHS
      number in PostgreSQL's `DETAIL: Key (...)=(...)`), and a command's output often ends up in a log.
    """
    from sqlalchemy.exc import SQLAlchemyError

    try:
        app()
    except SQLAlchemyError as error:
        code, line = _database_failure(error)
        typer.echo(f"iap-gateway: {line}", err=True)
        sys.exit(code)


def _database_failure(error: Exception) -> tuple[int, str]:
    """The exit code and the line for a database error that ended a command (`main`)."""
    from gateway.store.db import sqlite_file_unusable, store_unavailable

    name = type(error).__name__
    reason = (str(getattr(error, "orig", None) or "").strip().splitlines() or ["no reason given"])[0]
    if sqlite_file_unusable(error):
        return EXIT_STORE_MISCONFIGURED, (
            f"the SQLite database {_sqlite_file()} cannot be used ({name}: {reason}); check DATABASE_URL: the file's folder"
            " must exist and be writable, and the file, if there, must be a SQLite database"
        )
    if store_unavailable(error):
        return EXIT_STORE_UNAVAILABLE, (
            f"the database is unavailable ({name}: {reason}); check DATABASE_URL if the reason names a wrong database, role"
            " or password, else run the command again once it is back"
        )
    return 1, f"a database error ended the command ({name}; its message is withheld: it can quote stored values)"


def _sqlite_file() -> str:
    """The SQLite file DATABASE_URL names, as an absolute path (a relative one is from the working directory)."""
    from sqlalchemy.engine import make_url

    from gateway.settings import Settings

    return str(Path(make_url(Settings().database_url).database or "").resolve())


if __name__ == "__main__":
    main()
