"""Base models as a resource: every job names its model, workers say what they hold, edits list by index.

``jobs.base_model`` routes a job to its model's workers (and Redis stream). Existing jobs get the
model of their edit; other jobs the model of the newest model state, else of the worker heard from
last, else the embedded default. Workers report family, dtype and the bytes of their pristine
copies. The edits list reads composite keyset indexes (newest first, optionally by status or model).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-15
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"  # service.engine.inputs.EMBEDDED_MODEL when this was written
EDIT_INDEXES = {
    "ix_edits_created_at_id": ["created_at", "id"],
    "ix_edits_status_created_at_id": ["status", "created_at", "id"],
    "ix_edits_base_model_created_at_id": ["base_model", "created_at", "id"],
}
SINGLE_EDIT_INDEXES = {
    "ix_edits_status": "status",
    "ix_edits_base_model": "base_model",
    "ix_edits_created_at": "created_at",
}
WORKER_COLUMNS: dict[str, sa.types.TypeEngine] = {
    "family": sa.String(64),
    "dtype": sa.String(16),
    "pristine_bytes": sa.BigInteger(),
}


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("base_model", sa.String(255), nullable=True))
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("base_model", sa.String))
    edits = sa.table("edits", sa.column("job_id", sa.String), sa.column("base_model", sa.String))
    states = sa.table("model_state", sa.column("base_model", sa.String), sa.column("updated_at", sa.DateTime))
    workers = sa.table("workers", sa.column("base_model", sa.String), sa.column("last_heartbeat", sa.DateTime))
    of_edit = sa.select(edits.c.base_model).where(edits.c.job_id == jobs.c.id).limit(1).scalar_subquery()
    newest_state = sa.select(states.c.base_model).order_by(states.c.updated_at.desc()).limit(1).scalar_subquery()
    last_worker = sa.select(workers.c.base_model).order_by(workers.c.last_heartbeat.desc()).limit(1).scalar_subquery()
    fallback = sa.func.coalesce(of_edit, newest_state, last_worker, sa.literal(EMBEDDED_MODEL))
    op.execute(jobs.update().values(base_model=fallback))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("base_model", existing_type=sa.String(255), nullable=False)
        batch.create_index("ix_jobs_base_model_status", ["base_model", "status"])
    with op.batch_alter_table("workers") as batch:
        for name, type_ in WORKER_COLUMNS.items():
            batch.add_column(sa.Column(name, type_, nullable=True))
    for name in SINGLE_EDIT_INDEXES:
        op.drop_index(name, table_name="edits")
    for name, columns in EDIT_INDEXES.items():
        op.create_index(name, "edits", columns)


def downgrade() -> None:
    for name in EDIT_INDEXES:
        op.drop_index(name, table_name="edits")
    for name, column in SINGLE_EDIT_INDEXES.items():
        op.create_index(name, "edits", [column])
    with op.batch_alter_table("workers") as batch:
        for name in WORKER_COLUMNS:
            batch.drop_column(name)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_base_model_status")
        batch.drop_column("base_model")
