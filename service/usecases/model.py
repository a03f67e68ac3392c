"""The model's desired state as the database holds it, and what the workers report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from service.db.models import ModelState, Worker, utcnow
from service.usecases.errors import InvalidRequest, ModelUnavailable

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
    family: str | None = None
    dtype: str | None = None
    pristine_bytes: int | None = None  # held by its copies of the edited layers


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

    @property
    def served(self) -> bool:
        return bool(self.live_workers)

    def _latest(self, name: str) -> str | None:
        """What the live worker heard from last reports as ``name`` (family, dtype), or None."""
        return next((getattr(w, name) for w in self.live_workers if getattr(w, name) is not None), None)

    @property
    def family(self) -> str | None:
        return self._latest("family")

    @property
    def dtype(self) -> str | None:
        return self._latest("dtype")

    @property
    def pristine_bytes(self) -> int | None:
        """The most any live worker holds in pristine copies (they serve the same edits)."""
        held = [w.pristine_bytes for w in self.live_workers if w.pristine_bytes is not None]
        return max(held) if held else None


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
            family=w.family,
            dtype=w.dtype,
            pristine_bytes=w.pristine_bytes,
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


def served_models(session: Session, lease_seconds: float, now: datetime | None = None) -> list[ModelStatus]:
    """Every base model with a live worker, by name."""
    cutoff = (now or utcnow()) - timedelta(seconds=lease_seconds)
    names = session.scalars(
        select(Worker.base_model)
        .where(Worker.last_heartbeat >= cutoff, Worker.status.not_in(STOPPED_WORKER_STATUSES))
        .distinct()
        .order_by(Worker.base_model)
    ).all()
    statuses = [model_status(session, name, lease_seconds, now) for name in names]
    return [status for status in statuses if status.served]


def resolve_model(
    session: Session, requested: str | None, *, default: str, lease_seconds: float, loc: tuple[str, ...]
) -> str:
    """The base model a request is for: the one it names, else the only one served, else ``default``.

    A named model must be served, or be ``default`` (the gateway's own, whose jobs wait for a
    worker). Raises :class:`InvalidRequest` (at ``loc``) for a model no worker has ever served, or
    when several are served and none is named; :class:`ModelUnavailable` for a known model whose
    workers are all gone.
    """
    served = [status.base_model for status in served_models(session, lease_seconds)]
    if requested is None:
        if len(served) > 1:
            msg = f"several models are served: name one of {served}"
            raise InvalidRequest([{"loc": list(loc), "msg": msg, "type": "model_required"}])
        return served[0] if served else default
    if requested in served or requested == default:
        return requested
    known = session.scalar(select(Worker.id).where(Worker.base_model == requested).limit(1)) is not None
    if known:
        raise ModelUnavailable(f"no live worker serves model {requested!r} right now; retry later")
    msg = f"no worker serves model {requested!r}; served: {served or [default]}"
    raise InvalidRequest([{"loc": list(loc), "msg": msg, "type": "model_not_served"}])
