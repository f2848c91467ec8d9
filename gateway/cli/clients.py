"""`iap-gateway clients ...`: client systems, their credentials and scopes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gateway.cli.common import store_sessions

app = typer.Typer(no_args_is_help=True, help="Client systems: their credentials and scopes.")


def _client_error(error: Exception) -> typer.Exit:
    typer.echo(f"error: {error}", err=True)
    return typer.Exit(code=2)


@app.command("add")
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
    from gateway.cas.rules.schema import load_rules
    from gateway.pathways.rules.schema import load_pathways
    from gateway.platform.clock import SystemClock
    from gateway.platform.security.clients import ClientError, add_client, parse_scopes
    from gateway.platform.settings import Settings

    try:
        granted = parse_scopes(scopes)
        if service is not None:
            settings = Settings()
            known = {*load_rules(settings.rules_dir).services, *load_pathways(settings.pathways_dir).services}
            if service not in known:
                raise ClientError(f"unknown service {service!r}; known: {sorted(known)}")
        with store_sessions() as sessions, sessions.begin() as session:
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


@app.command("list")
def clients_list() -> None:
    """The clients: name, id, active or revoked, service, credentials, scopes (never a secret)."""
    from gateway.platform.security.clients import list_clients

    with store_sessions() as sessions, sessions() as session:
        for client in list_clients(session):
            kinds = [k for k, v in (("api-key", client.key_hash), ("jwt", client.jwks)) if v]
            state = "active" if client.active else "revoked"
            typer.echo(f"{client.name}\t{client.id}\t{state}\t{client.service_id or '-'}\t{','.join(kinds)}\t{client.scopes}")


@app.command("revoke")
def clients_revoke(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """Refuse a client from now on (its API key, its assertions and its access tokens), on every instance."""
    from gateway.platform.clock import SystemClock
    from gateway.platform.security.clients import ClientError, revoke_client

    try:
        with store_sessions() as sessions, sessions.begin() as session:
            revoke_client(session, name, SystemClock().now())
    except ClientError as error:
        raise _client_error(error) from None
    typer.echo(f"client {name} revoked", err=True)


@app.command("rotate-key")
def clients_rotate_key(name: Annotated[str, typer.Argument(help="The client's name.")]) -> None:
    """A new API key for a client (printed once on stdout); the old one stops working at once."""
    from gateway.platform.security.clients import ClientError, rotate_api_key

    try:
        with store_sessions() as sessions, sessions.begin() as session:
            key = rotate_api_key(session, name)
    except ClientError as error:
        raise _client_error(error) from None
    typer.echo(key)


@app.command("scopes")
def clients_scopes() -> None:
    """Every scope and what it allows."""
    from gateway.platform.security.scopes import SCOPES

    for scope, meaning in SCOPES.items():
        typer.echo(f"{scope:<16} {meaning}")
