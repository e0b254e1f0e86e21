"""drop unused columns: runs.mixer_state (never written: mixer state lives with each round) and
rounds.data_cursor (repeated the plan's cursors, which plan_json holds)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("mixer_state")
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("data_cursor")


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("data_cursor", sa.JSON(), nullable=False, server_default="{}"))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("mixer_state", sa.JSON(), nullable=True))
