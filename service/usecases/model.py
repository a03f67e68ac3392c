"""The model's desired state as the database holds it, and what the workers report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.db.models import ModelState, Worker, utcnow

STOPPED_WORKER_STATUSES = ("stopped",)


@dataclass(frozen=True)
class WorkerStatus:
    """One worker as it last reported itself; ``alive`` means a heartbeat within the lease."""

    id: str
    host: str
    status: str
    state_version: int
    weights_checksum: str | None
    model_fingerprint: str
    last_heartbeat: datetime
    alive: bool
    n_layers: int | None = None  # the depth of its model, as it registered it


@dataclass(frozen=True)
class ModelStatus:
    """The desired state of a base model and whether the live workers have reached it."""

    base_model: str
    fingerprint: str | None
    state_version: int
    active_edits: list[str]
    workers: list[WorkerStatus]

    @property
    def live_workers(self) -> list[WorkerStatus]:
        return [w for w in self.workers if w.alive]

    @property
    def converged(self) -> bool:
        """True iff at least one worker is alive and every live worker is at the desired version."""
        live = self.live_workers
        return bool(live) and all(w.state_version == self.state_version for w in live)

    @property
    def n_layers(self) -> int | None:
        """The model's depth as the live workers registered it (the least, should they differ); None with none."""
        depths = [w.n_layers for w in self.live_workers if w.n_layers is not None]
        return min(depths) if depths else None


def ping_database(session: Session) -> None:
    """Round-trip to the database; raises the driver's error when it is unreachable."""
    session.execute(text("SELECT 1"))


def model_status(session: Session, base_model: str, lease_seconds: float, now: datetime | None = None) -> ModelStatus:
    """Read (never create) the state of ``base_model`` and its workers; version 0 when no state row exists.

    The fingerprint is that of the live worker heard from most recently, or None with no live worker.
    """
    now = now or utcnow()
    state = session.scalars(
        select(ModelState).where(ModelState.base_model == base_model).execution_options(populate_existing=True)
    ).one_or_none()
    rows = session.scalars(
        select(Worker)
        .where(Worker.base_model == base_model)
        .order_by(Worker.last_heartbeat.desc(), Worker.id)
        .execution_options(populate_existing=True)
    ).all()
    cutoff = now - timedelta(seconds=lease_seconds)
    workers = [
        WorkerStatus(
            id=w.id,
            host=w.host,
            status=w.status,
            state_version=w.state_version,
            weights_checksum=w.weights_checksum,
            model_fingerprint=w.model_fingerprint,
            last_heartbeat=w.last_heartbeat,
            alive=w.last_heartbeat >= cutoff and w.status not in STOPPED_WORKER_STATUSES,
            n_layers=w.n_layers,
        )
        for w in rows
    ]
    live = [w for w in workers if w.alive]
    return ModelStatus(
        base_model=base_model,
        fingerprint=live[0].model_fingerprint if live else None,
        state_version=state.version if state else 0,
        active_edits=list(state.active_edit_ids) if state else [],
        workers=workers,
    )
