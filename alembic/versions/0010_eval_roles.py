"""evals.role: what a score measures (source: forgetting, target: gain), for the agent's reward

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05 01:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("evals") as batch:
        batch.add_column(sa.Column("role", sa.String(8), nullable=False, server_default="none"))


def downgrade() -> None:
    with op.batch_alter_table("evals") as batch:
        batch.drop_column("role")
