"""the rule file version an open CAS case's colours and safety calls follow (issue 37, CAS-09): a token per case

A Task's token `rule-set` (resource_tokens) names it, written with the Task from now on; this fills it for the open
cases already stored, from their `rule-set` inputs (the last one: the version that last decided the case). A token,
not a column of `resources`: a wider row changed PostgreSQL's plan for the write path's locking read on an
unanalysed table (tests/test_store.py).

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
    return found[:255] if isinstance(found, str) and found else None


def upgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT id, content FROM resources WHERE {OPEN_CAS_CASE}")).all()
    tokens = [{"id": rid, "label": label} for rid, content in rows if (label := _label(content))]
    if tokens:
        connection.execute(sa.text("DELETE FROM resource_tokens WHERE resource_type = 'Task' AND param = 'rule-set'"))
        connection.execute(
            sa.text(
                "INSERT INTO resource_tokens (resource_type, resource_id, param, system, code) VALUES ('Task', :id, 'rule-set', '', :label)"
            ),
            tokens,
        )


def downgrade() -> None:
    op.execute("DELETE FROM resource_tokens WHERE resource_type = 'Task' AND param = 'rule-set'")
