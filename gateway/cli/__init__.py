"""The `iap-gateway` command (entry point `gateway.cli:main`), one module per command group.

A new command group: a module here defining `app = typer.Typer(...)` and its commands, added to the root below:
to COMMANDS when its commands sit at the top (`iap-gateway tick`), to GROUPS under a name (`iap-gateway clients add`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from gateway.cli import clients, demo, jobs, migrate, offline, outbox, practices, report, rules, serve

app = typer.Typer(add_completion=False, no_args_is_help=True, help="IAP gateway: NHS 111 referrals -> FHIR R4 CAS queue.")

# `iap-gateway <command>`, in the order `--help` lists them
COMMANDS = (serve.app, offline.app, jobs.app, demo.app, migrate.app)
# `iap-gateway <group> <command>`
GROUPS = {"clients": clients.app, "outbox": outbox.app, "practices": practices.app, "report": report.app, "rules": rules.app}

for commands in COMMANDS:
    app.add_typer(commands)
for name, group in GROUPS.items():
    app.add_typer(group, name=name)

# sysexits.h EX_TEMPFAIL: a temporary failure, the user is invited to retry (cron, systemd and shells read it so)
EXIT_STORE_UNAVAILABLE = 75
# sysexits.h EX_CONFIG: a configuration error; running it again will not help (systemd's RestartPreventExitStatus=78)
EXIT_STORE_MISCONFIGURED = 78


def main() -> None:
    """The `iap-gateway` command. A database error ends it with one line on stderr, not a traceback:

    - a SQLite file that cannot be used whatever the time (`gateway.platform.store.db.sqlite_file_unusable`: its folder does
      not exist or may not be written, or it is not a SQLite database): exit 78 (EX_CONFIG: fix DATABASE_URL), naming
      the file;
    - the database unavailable (`gateway.platform.store.db.store_unavailable`: unreachable, restarting, a lock or
      statement timeout): exit 75 (EX_TEMPFAIL: run it again later), with the driver's reason (its first line: it
      names the server, the database or the timeout, never a row);
    - any other database error: exit 1, naming only its type: its message can quote the values of a row (an NHS
      number in PostgreSQL's `DETAIL: Key (...)=(...)`), and a command's output often ends up in a log.

    A setting that no retry will fix exits 78 too, saying which and why, never quoting a value: a DATABASE_URL that is
    not one the gateway can use (`gateway.platform.store.database_url`), a PostgreSQL database or role that is not there, or any
    other setting Settings refuses.
    """
    from pydantic import ValidationError
    from sqlalchemy.exc import SQLAlchemyError

    from gateway.platform.store.database_url import DatabaseUrlInvalid

    try:
        app()
    except SQLAlchemyError as error:
        code, line = _database_failure(error)
        typer.echo(f"iap-gateway: {line}", err=True)
        sys.exit(code)
    except DatabaseUrlInvalid as error:
        typer.echo(f"iap-gateway: {error}", err=True)
        sys.exit(EXIT_STORE_MISCONFIGURED)
    except ValidationError as error:  # Settings: its str() would quote the values (a password among them)
        for problem in error.errors(include_input=False, include_url=False):
            typer.echo(f"iap-gateway: {_setting_name(problem['loc'])}: {problem['msg']}", err=True)
        sys.exit(EXIT_STORE_MISCONFIGURED)


def _setting_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable a Settings error is about: DATABASE_URL as it is, a field as IAP_<FIELD>."""
    name = str(loc[0]) if loc else "settings"
    return name if name.isupper() or not loc else f"IAP_{name.upper()}"


def _database_failure(error: Exception) -> tuple[int, str]:
    """The exit code and the line for a database error that ended a command (`main`)."""
    from gateway.platform.store.database_url import database_setting_refused
    from gateway.platform.store.db import sqlite_file_unusable, store_unavailable

    name = type(error).__name__
    reason = (str(getattr(error, "orig", None) or "").strip().splitlines() or ["no reason given"])[0]
    if sqlite_file_unusable(error):
        return EXIT_STORE_MISCONFIGURED, (
            f"the SQLite database {_sqlite_file()} cannot be used ({name}: {reason}); check DATABASE_URL: the file's folder"
            " must exist and be writable, and the file, if there, must be a SQLite database"
        )
    if database_setting_refused(error):
        return EXIT_STORE_MISCONFIGURED, (
            f"the database refused the connection ({name}: {reason}); check DATABASE_URL: the database and role it names"
            " must exist on that server"
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

    from gateway.platform.settings import Settings

    return str(Path(make_url(Settings().database_url).database or "").resolve())
