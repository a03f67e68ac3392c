"""The heartbeat: a worker's ``workers`` row (its model: name, family, dtype, depth; the state served, the
bytes of its pristine copies, status) and its job's lease."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Worker, utcnow
from workers.claims import extend_lease
from workers.reconcile import Reconciler

log = logging.getLogger(__name__)


class Heartbeat:
    """Writes the ``workers`` row of ``worker_id`` (what its reconciler serves) and extends its job's lease."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        reconciler: Reconciler,
        *,
        worker_id: str,
        host: str,
        lease_seconds: float,
    ) -> None:
        self.session_factory = session_factory
        self.reconciler = reconciler
        self.worker_id = worker_id
        self.host = host
        self.lease_seconds = lease_seconds
        self.started_at = utcnow()

    def beat(self, status: str, job_id: str | None) -> bool:
        """Write the row with ``status``, then extend the lease of ``job_id``; False only if that claim is lost.

        Never raises: a failed beat is logged, and the next one tries again.
        """
        lm = self.reconciler.lm
        try:
            with self.session_factory() as session:
                record_worker(
                    session,
                    self.worker_id,
                    host=self.host,
                    base_model=lm.name,
                    model_fingerprint=lm.fingerprint,
                    n_layers=lm.n_layers,
                    family=lm.adapter.name,
                    dtype=str(lm.model.dtype).removeprefix("torch."),
                    pristine_bytes=self.reconciler.weights.pristine_bytes,
                    state_version=self.reconciler.version,
                    weights_checksum=self.reconciler.checksum,
                    status=status,
                    started_at=self.started_at if status == "starting" else None,
                )
            if job_id is None:
                return True
            with self.session_factory() as session:
                return extend_lease(session, job_id, self.worker_id, self.lease_seconds)
        except Exception as exc:
            log.warning("heartbeat of worker %s failed: %s", self.worker_id, exc)
            return True


def record_worker(
    session: Session,
    worker_id: str,
    *,
    host: str,
    base_model: str,
    model_fingerprint: str,
    n_layers: int,
    family: str | None = None,
    dtype: str | None = None,
    pristine_bytes: int | None = None,
    state_version: int,
    weights_checksum: str | None,
    status: str,
    started_at: datetime | None = None,
) -> None:
    """Insert or update the ``workers`` row (the heartbeat, with what the model is and holds) and commit."""
    now = utcnow()
    values: dict[str, Any] = {
        "host": host,
        "base_model": base_model,
        "model_fingerprint": model_fingerprint,
        "n_layers": n_layers,
        "family": family,
        "dtype": dtype,
        "pristine_bytes": pristine_bytes,
        "state_version": state_version,
        "weights_checksum": weights_checksum,
        "status": status,
        "last_heartbeat": now,
    }
    if started_at is not None:
        values["started_at"] = started_at
    dialect = session.get_bind().dialect.name
    try:
        if dialect in ("postgresql", "sqlite"):
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            stmt = insert(Worker).values(id=worker_id, **{"started_at": now, **values})
            session.execute(stmt.on_conflict_do_update(index_elements=[Worker.id], set_=values))
        else:  # pragma: no cover - only Postgres and SQLite are supported
            result = session.execute(update(Worker).where(Worker.id == worker_id).values(**values))
            if result.rowcount == 0:  # type: ignore[attr-defined]
                session.add(Worker(id=worker_id, **{"started_at": now, **values}))
        session.commit()
    except BaseException:
        session.rollback()
        raise
