"""every version of the resources that change over their life (FHIR vread and _history; CAS-08's proof)

The versions table starts with each stored resource's current version (earlier ones were never kept).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from gateway.platform.store.models import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# gateway.platform.store.models.KEPT_VERSIONS as this revision wrote it
_KEPT = ("Task", "Patient", "EpisodeOfCare", "ServiceRequest", "Encounter", "Flag", "CarePlan", "Consent", "CommunicationRequest")


def upgrade() -> None:
    op.create_table(
        "resource_versions",
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("last_updated", UTCDateTime(), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
    )
    kept = ", ".join(f"'{name}'" for name in _KEPT)
    op.execute(
        "INSERT INTO resource_versions (resource_type, id, version_id, last_updated, content)"
        f" SELECT resource_type, id, version_id, last_updated, content FROM resources WHERE resource_type IN ({kept})"
    )


def downgrade() -> None:
    op.drop_table("resource_versions")
