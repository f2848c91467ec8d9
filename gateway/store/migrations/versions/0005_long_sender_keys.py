"""senders' over-long ids and identifiers are indexed by their digest (gateway/store/keys.py)

Only an SQLite store can hold one as sent (it does not enforce column lengths; PostgreSQL refused them): each is
rewritten to the key the gateway now looks it up by, so a re-send of such a message still meets its original.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

from gateway.store.keys import IDENTIFIER_KEY_CHARS, MESSAGE_KEY_CHARS, identifier_key, message_key

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_MESSAGE_COLUMNS = ("message_id", "header_id", "correlation_id")


def upgrade() -> None:
    connection = op.get_bind()
    for column in _MESSAGE_COLUMNS:
        rows = connection.execute(
            sa.text(f"SELECT seq, {column} FROM inbound_messages WHERE length({column}) > :limit"), {"limit": MESSAGE_KEY_CHARS}
        ).all()
        for seq, value in rows:
            connection.execute(
                sa.text(f"UPDATE inbound_messages SET {column} = :key WHERE seq = :seq"), {"key": message_key(value), "seq": seq}
            )
    rows = connection.execute(
        sa.text("SELECT resource_type, system, value FROM resource_identifiers WHERE length(system) > :limit OR length(value) > :limit"),
        {"limit": IDENTIFIER_KEY_CHARS},
    ).all()
    for resource_type, system, value in rows:
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
