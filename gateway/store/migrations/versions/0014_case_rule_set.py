"""resources.rule_set: the rule file version an open CAS case's colours and safety calls follow (issue 37, CAS-09)

Filled for the open cases already stored, from their Task's `rule-set` inputs (the last one: the version that last
decided the case). Not indexed: the queue reads it for one page's rows only (bench/README.md).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

OPEN_CAS_CASE = (
    "resource_type = 'Task' AND breach_at IS NOT NULL"
    " AND status IN ('requested', 'received', 'accepted', 'ready', 'in-progress', 'on-hold')"
)


def _label(content: str) -> str | None:
    found = None
    for given in json.loads(content).get("input") or []:
        if (((given.get("type") or {}).get("coding") or [{}])[0]).get("code") == "rule-set":
            found = given.get("valueString")
    return found if isinstance(found, str) else None


def upgrade() -> None:
    op.add_column("resources", sa.Column("rule_set", sa.String(length=128), nullable=True))
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT id, content FROM resources WHERE {OPEN_CAS_CASE}")).all()
    labels = [{"id": rid, "label": label} for rid, content in rows if (label := _label(content))]
    if labels:
        connection.execute(sa.text("UPDATE resources SET rule_set = :label WHERE resource_type = 'Task' AND id = :id"), labels)


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("rule_set")
