"""token search table; effective date column (Observation and QuestionnaireResponse search)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resource_tokens",
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=32), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("code", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("resource_type", "resource_id", "param", "system", "code"),
    )
    with op.batch_alter_table("resource_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_tokens_lookup", ["resource_type", "param", "code"], unique=False)
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.add_column(sa.Column("effective_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_column("effective_at")
    with op.batch_alter_table("resource_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_lookup")
    op.drop_table("resource_tokens")
