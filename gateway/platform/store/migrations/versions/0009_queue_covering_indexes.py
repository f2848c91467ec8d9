"""the open-queue indexes (0006) hold every column the queue and its summary read, the type and service first

On SQLite, which keeps no statistics, the count of a service's open cases took `ix_resources_queue` (type,
service, breach time: every Task of the service, closed ones too) over the partial index, 1 s at 100,000
referrals; the partial indexes now lead with the same equality columns and cover the queries (bench/README.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OPEN_CAS_CASE = (
    "resource_type = 'Task' AND breach_at IS NOT NULL"
    " AND status IN ('requested', 'received', 'accepted', 'ready', 'in-progress', 'on-hold')"
)
NOW = {
    "ix_resources_open_queue_service": [
        *("resource_type", "service_id", "breach_at", "authored_on", "id"),
        *("status", "business_status", "subject_id", "priority"),
    ],
    "ix_resources_open_queue": [
        *("resource_type", "breach_at", "authored_on", "id"),
        *("status", "service_id", "business_status", "subject_id", "priority"),
    ],
}
BEFORE = {
    "ix_resources_open_queue_service": ["service_id", "breach_at", "authored_on", "id"],
    "ix_resources_open_queue": ["breach_at", "authored_on", "id"],
}


def _recreate(indexes: dict[str, list[str]]) -> None:
    where = sa.text(OPEN_CAS_CASE)
    for name, columns in indexes.items():
        op.drop_index(name, table_name="resources")
        op.create_index(name, "resources", columns, postgresql_where=where, sqlite_where=where)


def upgrade() -> None:
    _recreate(NOW)


def downgrade() -> None:
    _recreate(BEFORE)
