"""senders' over-long ids and identifiers (or ones holding a NUL) are indexed by their digest (gateway/platform/store/keys.py)

Only an SQLite store can hold one as sent (it does not enforce column lengths, and keeps a NUL; PostgreSQL
refused both): each is rewritten to the key the gateway now looks it up by, so a re-send of such a message
still meets its original.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from gateway.platform.store.keys import IDENTIFIER_KEY_CHARS, MESSAGE_KEY_CHARS, identifier_key, message_key

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _suspects(column: str, limit: int) -> str:
    """Rows that may need a new key: as bytes (SQLite's length() of text stops at a NUL), longer or with a NUL."""
    return f"(length(CAST({column} AS BLOB)) > {int(limit)} OR instr(CAST({column} AS BLOB), x'00') > 0)"


def upgrade() -> None:
    connection = op.get_bind()
    if connection.dialect.name != "sqlite":
        return
    for column in ("message_id", "header_id", "correlation_id"):
        found = connection.execute(sa.text(f"SELECT seq, {column} FROM inbound_messages WHERE {_suspects(column, MESSAGE_KEY_CHARS)}"))
        for seq, value in found.all():
            if message_key(value) != value:
                connection.execute(
                    sa.text(f"UPDATE inbound_messages SET {column} = :key WHERE seq = :seq"), {"key": message_key(value), "seq": seq}
                )
    found = connection.execute(
        sa.text(
            "SELECT resource_type, system, value FROM resource_identifiers"
            f" WHERE {_suspects('system', IDENTIFIER_KEY_CHARS)} OR {_suspects('value', IDENTIFIER_KEY_CHARS)}"
        )
    )
    for resource_type, system, value in found.all():
        if (identifier_key(system), identifier_key(value)) != (system, value):
            connection.execute(
                sa.text(
                    "UPDATE resource_identifiers SET system = :new_system, value = :new_value"
                    " WHERE resource_type = :type AND system = :system AND value = :value"
                ),
                {
                    "new_system": identifier_key(system),
                    "new_value": identifier_key(value),
                    "type": resource_type,
                    "system": system,
                    "value": value,
                },
            )


def downgrade() -> None:
    """Digests cannot be turned back into the ids they stand for; they stay (and still fit the columns)."""
