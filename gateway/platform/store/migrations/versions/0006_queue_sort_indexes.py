"""the CAS queue and Task searches from indexes: partial indexes of the open queue (CAS-02), one per Task `_sort`
key, and `date` order; token rows the CAS-16 summary counts by: Task.performerType, Patient.birthDate, Provenance.reason

Existing rows are filled in: the new token rows from each Task's, Patient's and Provenance's JSON, and the service of
each stored queue risk level Observation (it names it in `focus`).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OPEN_CAS_CASE = (
    "resource_type = 'Task' AND breach_at IS NOT NULL"
    " AND status IN ('requested', 'received', 'accepted', 'ready', 'in-progress', 'on-hold')"
)
TASK_SORTS = {
    "ix_tasks_sort_authored": "authored_on",
    "ix_tasks_sort_updated": "last_updated",
    "ix_tasks_sort_priority": "priority",
    "ix_tasks_sort_status": "status",
    "ix_tasks_sort_breach": "breach_at",
}
QUEUE_RISK_CODE = "queue-risk-level"
BATCH = 1000


def upgrade() -> None:
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.create_index("ix_resources_sort_effective", ["resource_type", "effective_at", "id"], unique=False)
    for name, column in TASK_SORTS.items():
        op.create_index(name, "resources", ["resource_type", column, "id"])
    where = sa.text(OPEN_CAS_CASE)
    for name, columns in (
        ("ix_resources_open_queue_service", ["service_id", "breach_at", "authored_on", "id"]),
        ("ix_resources_open_queue", ["breach_at", "authored_on", "id"]),
    ):
        op.create_index(name, "resources", columns, postgresql_where=where, sqlite_where=where)
    _backfill()


def _rows(connection: sa.Connection, sql: str) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in connection.execute(sa.text(sql))]


def _backfill() -> None:
    connection = op.get_bind()
    tokens: list[dict[str, str]] = []
    for rid, content in _rows(
        connection, "SELECT id, content FROM resources WHERE resource_type = 'Task' AND content LIKE '%performerType%'"
    ):
        found = {
            (c.get("system", ""), c["code"])
            for t in json.loads(content).get("performerType") or []
            for c in t.get("coding", [])
            if c.get("code")
        }
        tokens += [{"type": "Task", "id": rid, "param": "performer-type", "system": s, "code": c} for s, c in sorted(found)]
    for rid, content in _rows(connection, "SELECT id, content FROM resources WHERE resource_type = 'Patient'"):
        born = json.loads(content).get("birthDate")
        if isinstance(born, str) and len(born) == 10:
            tokens.append({"type": "Patient", "id": rid, "param": "birthdate", "system": "", "code": born})
    for rid, content in _rows(connection, "SELECT id, content FROM resources WHERE resource_type = 'Provenance'"):
        found = {
            (c.get("system", ""), c["code"]) for r in json.loads(content).get("reason", []) for c in r.get("coding", []) if c.get("code")
        }
        tokens += [{"type": "Provenance", "id": rid, "param": "reason", "system": s, "code": c} for s, c in sorted(found)]
    insert = sa.text(
        "INSERT INTO resource_tokens (resource_type, resource_id, param, system, code) VALUES (:type, :id, :param, :system, :code)"
    )
    for start in range(0, len(tokens), BATCH):
        connection.execute(insert, tokens[start : start + BATCH])
    updates = []
    risk_levels = (
        "SELECT r.id, r.content FROM resources r JOIN resource_tokens t ON t.resource_type = r.resource_type AND t.resource_id = r.id"
        f" WHERE r.resource_type = 'Observation' AND r.service_id IS NULL AND t.param = 'code' AND t.code = '{QUEUE_RISK_CODE}'"
    )
    for rid, content in _rows(connection, risk_levels):
        service = (json.loads(content).get("focus") or [{}])[0].get("identifier", {}).get("value")
        if service:
            updates.append({"id": rid, "value": service})
    statement = sa.text("UPDATE resources SET service_id = :value WHERE resource_type = 'Observation' AND id = :id")
    for start in range(0, len(updates), BATCH):
        connection.execute(statement, updates[start : start + BATCH])


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM resource_tokens WHERE param IN ('performer-type', 'birthdate', 'reason')"))
    op.drop_index("ix_resources_open_queue", table_name="resources")
    op.drop_index("ix_resources_open_queue_service", table_name="resources")
    for name in TASK_SORTS:
        op.drop_index(name, table_name="resources")
    with op.batch_alter_table("resources", schema=None) as batch_op:
        batch_op.drop_index("ix_resources_sort_effective")
