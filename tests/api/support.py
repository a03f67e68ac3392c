"""Helpers for the API tests: database snapshots, and the worker side simulated by writing rows."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import Base, Edit, Job, StoredDelta, Worker, utcnow
from service.engine.inputs import EMBEDDED_MODEL
from service.jobs import JobQueue

BASE_MODEL = EMBEDDED_MODEL  # the gateway measures texts with its real tokenizer
DELTA_BYTES = b"fake-safetensors-bytes"

EDIT_BODY: dict[str, Any] = {
    "prompt": "The capital of the country where Mount Fuji is located is",
    "hop1_phrase": "the country where Mount Fuji is located",
    "bridge": "Japan",
    "answer": "Tokyo",
}

Snapshot = tuple[dict[str, list[tuple[Any, ...]]], int]


def snapshot(factory: sessionmaker[Session], queue: JobQueue) -> Snapshot:
    """Every row of every table, and the depth of the model's queue."""
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with factory() as session:
        for table in Base.metadata.sorted_tables:
            rows = session.execute(select(table)).all()
            tables[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return tables, queue.for_model(BASE_MODEL).depth()


def set_job(factory: sessionmaker[Session], job_id: str, status: str, **values: Any) -> None:
    """Write a job's status (and any other columns) as a worker would."""
    now = utcnow()
    defaults: dict[str, Any] = {"status": status}
    if status != "queued":
        defaults["started_at"] = now - timedelta(seconds=2)
    if status in ("succeeded", "failed", "cancelled"):
        defaults["finished_at"] = now
    with factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values({**defaults, **values}))
        session.commit()


def compute_edit(
    factory: sessionmaker[Session], edit_id: str, *, metrics: dict[str, Any] | None = None, version: int = 0
) -> None:
    """Store a delta and mark the edit computed, as a worker does after CREME."""
    with factory() as session:
        edit = session.get(Edit, edit_id)
        assert edit is not None
        edit.status = "computed"
        edit.layers = [4, 5]
        edit.computed_on_version = version
        edit.base_fingerprint = "f" * 64
        edit.metrics = metrics if metrics is not None else {"delta_norms": {"4": 0.5, "5": 0.25}}
        session.add(
            StoredDelta(
                edit_id=edit_id,
                data=DELTA_BYTES,
                sha256=hashlib.sha256(DELTA_BYTES).hexdigest(),
                shapes={"layer.4": [576, 1536], "layer.5": [576, 1536]},
            )
        )
        session.commit()


def add_worker(
    factory: sessionmaker[Session],
    worker_id: str,
    *,
    version: int,
    heartbeat: datetime | None = None,
    base_model: str = BASE_MODEL,
    status: str = "idle",
    n_layers: int | None = None,
) -> None:
    """A worker row as its heartbeat leaves it (``n_layers``: the depth it registered)."""
    with factory() as session:
        session.add(
            Worker(
                id=worker_id,
                host="gpu-1",
                base_model=base_model,
                model_fingerprint="f" * 64,
                n_layers=n_layers,
                state_version=version,
                weights_checksum="c" * 64,
                status=status,
                last_heartbeat=heartbeat or utcnow(),
            )
        )
        session.commit()


class FakeWorker(threading.Thread):
    """Consumes one job id from the queue and finishes it with ``finish(session, job)``."""

    def __init__(self, factory: sessionmaker[Session], queue: JobQueue, finish: Callable[[Session, Job], None]) -> None:
        super().__init__(daemon=True)
        self.factory, self.queue, self.finish = factory, queue, finish
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            queue = self.queue.for_model(BASE_MODEL)
            delivery = queue.receive("fake-worker", timeout=10)
            assert delivery is not None
            with self.factory() as session:
                job = session.get(Job, delivery.job_id)
                assert job is not None
                job.status, job.started_at, job.attempts = "running", utcnow(), 1
                session.commit()
                self.finish(session, job)
                job.finished_at = utcnow()
                session.commit()
            queue.ack(delivery)
        except BaseException as exc:  # surfaced by the test through .error
            self.error = exc
