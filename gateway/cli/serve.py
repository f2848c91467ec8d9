"""`iap-gateway serve`: the HTTP API (and the MLLP listener)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gateway.cli.demo import demo_credential, demo_settings, load_demo, ready_block

app = typer.Typer()


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
    from gateway.platform.logging import uvicorn_log_config

    application = create_app(demo_settings() if demo else None)  # migrates and checks the rule files before anything listens
    settings = application.state.settings
    if demo:
        loaded = load_demo(application)
    else:
        _hint_if_no_clients(application)
    _check_mllp_port_free(settings, workers)
    if demo:  # the key line last: the one a newcomer pastes
        typer.echo(ready_block(loaded, f"http://{host}:{port}", settings.print_dir, demo_credential(application)), err=True)
    else:
        typer.echo(f"IAP gateway on http://{host}:{port}  (FHIR: /fhir/metadata, queue: /queue, API docs: /docs)", err=True)
    # no access log: a request line holds the query string, which may hold a patient identifier
    options: dict[str, Any] = dict(host=host, port=port, log_level="warning", access_log=False, log_config=uvicorn_log_config())
    if workers == 1:
        settle_heap(application.state.clock)
        uvicorn.run(application, **options)
    else:
        if demo:  # each worker builds its own app from the environment: the demo's settings go with it
            import os

            os.environ.pop("IAP_MESH_URL", None)
            os.environ["IAP_PRINT_DIR"], os.environ["IAP_LOG_LEVEL"] = str(settings.print_dir), settings.log_level
        application.state.engine.dispose()
        uvicorn.run("gateway.api.app:served_app", factory=True, workers=workers, **options)


def _check_mllp_port_free(settings: Any, workers: int) -> None:
    """A busy MLLP port ends `serve` in one line (exit 1), as a busy HTTP port does; `--workers N` share it, no one else."""
    import os

    from gateway.epr.mllp import SHARED_BY_WORKERS, PortInUse, check_port_free

    if settings.mllp_port <= 0:
        return
    try:
        check_port_free(settings.mllp_host, settings.mllp_port)
    except PortInUse as busy:
        typer.echo(f"iap-gateway: {busy.strerror}", err=True)
        raise typer.Exit(1) from None
    if workers > 1:
        os.environ[SHARED_BY_WORKERS] = "1"  # the workers (spawned with this environment) each listen on it, together


def _hint_if_no_clients(application: Any) -> None:
    from gateway.platform.security.clients import list_clients

    with application.state.sessions() as session:
        if not any(client.active for client in list_clients(session)):
            typer.echo("no clients yet: every request will get 401. Create one: iap-gateway clients add NAME --scopes ...", err=True)
