"""64-bit counters: rounds.tokens, rounds.step_start/step_end, stages.step_start/total_steps

A round of 512 steps x 1024 sequences x 4096 tokens is 2^31 tokens: INTEGER (int4 on
PostgreSQL) could not hold it, and such a round could never commit.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"rounds": ("tokens", "step_start", "step_end"), "stages": ("step_start", "total_steps")}


def upgrade() -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.BigInteger(), existing_type=sa.Integer())


def downgrade() -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.Integer(), existing_type=sa.BigInteger())
