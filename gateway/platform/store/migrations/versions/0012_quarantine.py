"""the quarantine log (refused inbound messages), re-sends counted, and who sent each stored message (issue 36)

inbound_messages gains the sending client and the service the message went to, for the operator console's message
log and its service binding; messages stored before 0012 have neither (seen by unbound clients only).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from gateway.platform.store.models import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("service_id", sa.String(length=32), nullable=True))
        batch_op.create_index("ix_inbound_received", ["received_at"], unique=False)
    op.create_table(
        "quarantine",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("service_id", sa.String(length=32), nullable=True),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("reply_status", sa.Integer(), nullable=True),
        sa.Column("ack_code", sa.String(length=2), nullable=True),
        sa.Column("problems", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_quarantine_received", "quarantine", ["received_at"], unique=False)
    op.create_table(
        "resent_messages",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=True),
        sa.Column("service_id", sa.String(length=32), nullable=True),
        sa.Column("message_id", sa.String(length=128), nullable=True),
        sa.Column("original_seq", sa.Integer(), nullable=True),
        sa.Column("reply_status", sa.Integer(), nullable=True),
        sa.Column("ack_code", sa.String(length=2), nullable=True),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_resent_received", "resent_messages", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_resent_received", table_name="resent_messages")
    op.drop_table("resent_messages")
    op.drop_index("ix_quarantine_received", table_name="quarantine")
    op.drop_table("quarantine")
    with op.batch_alter_table("inbound_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_inbound_received")
        batch_op.drop_column("service_id")
        batch_op.drop_column("client_id")
