"""the patients each service holds, read by every read of a client bound to a service (gateway.platform.store.visibility)

Rows stored before 0008 keep the service they were written with: a CAS Task's referral resources written before
then have none, so they stay visible to every service holding their patient (as every row without a service is).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index("ix_resources_service_subject", ["service_id", "subject_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index("ix_resources_service_subject")
