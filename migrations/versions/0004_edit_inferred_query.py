"""Bridge and answer may be left to the worker: edits.bridge and edits.answer become nullable.

A request without them stores NULL until the worker has inferred them from the model.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("bridge", "answer")


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        for name in COLUMNS:
            batch.alter_column(name, existing_type=sa.Text(), nullable=True)


def downgrade() -> None:
    edits = sa.table("edits", *(sa.column(name, sa.Text()) for name in COLUMNS))
    for name in COLUMNS:  # never inferred (the edit failed, or is still pending): an empty text
        op.execute(edits.update().where(edits.c[name].is_(None)).values({name: ""}))
    with op.batch_alter_table("edits") as batch:
        for name in COLUMNS:
            batch.alter_column(name, existing_type=sa.Text(), nullable=False)
