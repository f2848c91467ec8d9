"""DATABASE_URL read once, strictly: the forms people paste, and the mistakes that no retry will fix.

`postgres://` (what Heroku, RDS consoles and `pg_dump` print) and `postgresql://` both mean PostgreSQL through
psycopg 3 (`postgresql+psycopg://`, the driver the gateway ships); `sqlite:///path` is a SQLite file. Anything
else, or a string that is not a URL, is refused with `DatabaseUrlInvalid`, whose reason never quotes the value
(it holds the database password). The CLI turns it into exit 78 (EX_CONFIG), as it does a PostgreSQL server's
"no such database" or "no such role" (`database_setting_refused`): running the command again would fail the
same way (a systemd unit with `RestartPreventExitStatus=78` stops instead of looping).
"""

from __future__ import annotations

import re

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, OperationalError

__all__ = ["DatabaseUrlInvalid", "normalise_database_url", "database_setting_refused"]

_SHAPES = "postgresql://user:password@host:5432/database or sqlite:///path/to/file.db"
_PSYCOPG = "postgresql+psycopg://"
_POSTGRES_ALIASES = ("postgres://", "postgresql://")


class DatabaseUrlInvalid(ValueError):
    """DATABASE_URL cannot name a database the gateway can use; the message says why without quoting it."""


def normalise_database_url(url: str) -> str:
    """The URL SQLAlchemy is given: PostgreSQL through psycopg whichever way it was written, SQLite as it is."""
    url = url.strip()
    if not url:
        raise DatabaseUrlInvalid(f"DATABASE_URL is empty; expected {_SHAPES}")
    scheme = url.split("://", 1)[0].lower() if "://" in url else None
    if scheme is None or not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise DatabaseUrlInvalid(f"DATABASE_URL is not a URL (no scheme://); expected {_SHAPES}")
    for alias in _POSTGRES_ALIASES:
        if url.lower().startswith(alias):
            url = _PSYCOPG + url[len(alias) :]
    dialect = url.split("://", 1)[0].lower()
    if dialect not in ("postgresql+psycopg", "sqlite", "sqlite+pysqlite"):
        raise DatabaseUrlInvalid(
            f"DATABASE_URL names a database the gateway does not use ({dialect}://); expected {_SHAPES}"
            + (" (the gateway's PostgreSQL driver is psycopg 3)" if dialect.startswith("postgres") else "")
        )
    try:
        parsed = make_url(url)
        port = parsed.port  # noqa: F841 - a port that is not a number fails here
    except (ArgumentError, ValueError):
        raise DatabaseUrlInvalid(f"DATABASE_URL could not be read (check its port and special characters); expected {_SHAPES}") from None
    if dialect.startswith("postgresql") and not parsed.database:
        raise DatabaseUrlInvalid(f"DATABASE_URL names no database (the path after host:port); expected {_SHAPES}")
    return url


# The PostgreSQL server's words when the role or database in DATABASE_URL is not there (psycopg gives a failed
# connection no SQLSTATE: 3D000 / 28000 reach us only as the server's message, in its lc_messages, English by default)
_NOT_THERE = re.compile(r'FATAL:\s+(database|role) "[^"]*" does not exist')


def database_setting_refused(error: BaseException) -> bool:
    """`error` is PostgreSQL refusing the connection because DATABASE_URL names a database or role it does not have:
    a setting to fix, not an outage to wait out. (A wrong password stays an outage-like failure: during a password
    rotation it can be right again a minute later.)"""
    return isinstance(error, OperationalError) and bool(_NOT_THERE.search(str(getattr(error, "orig", "") or "")))
