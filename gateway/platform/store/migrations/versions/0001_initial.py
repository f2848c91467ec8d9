"""initial schema: resources, identifiers, inbound messages

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "inbound_messages",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("header_id", sa.String(length=128), nullable=True),
        sa.Column("correlation_id", sa.String(length=128), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("rule_set", sa.String(length=64), nullable=True),
        sa.Column("unused", sa.Text(), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=False),
        sa.Column("response_body", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("channel", "header_id", name="uq_inbound_channel_header"),
        sa.UniqueConstraint("channel", "message_id", name="uq_inbound_channel_message"),
    )
    op.create_table(
        "resource_identifiers",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "system", "value"),
    )
    op.create_table(
        "resources",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=True),
        sa.Column("business_status", sa.String(length=64), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=True),
        sa.Column("subject_id", sa.String(length=64), nullable=True),
        sa.Column("service_id", sa.String(length=32), nullable=True),
        sa.Column("authored_on", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breach_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("resource_type", "id"),
    )
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index("ix_resources_queue", ["resource_type", "service_id", "breach_at"], unique=False)
        batch_op.create_index("ix_resources_type_status", ["resource_type", "status"], unique=False)
        batch_op.create_index("ix_resources_type_subject", ["resource_type", "subject_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index("ix_resources_type_subject")
        batch_op.drop_index("ix_resources_type_status")
        batch_op.drop_index("ix_resources_queue")

    op.drop_table("resources")
    op.drop_table("resource_identifiers")
    op.drop_table("inbound_messages")
