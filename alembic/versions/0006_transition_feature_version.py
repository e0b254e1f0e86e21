"""transition feature version: which state features a stored transition was computed with

Rows written before this revision used feature version 1 (a fixed 2-domain layout).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:50:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("transitions") as batch:
        batch.add_column(sa.Column("feature_version", sa.String(8), nullable=False, server_default="1"))
        batch.create_index("ix_transitions_feature_version", ["feature_version"])


def downgrade() -> None:
    with op.batch_alter_table("transitions") as batch:
        batch.drop_index("ix_transitions_feature_version")
        batch.drop_column("feature_version")
