"""Job use-cases: submit (validated, depth-limited, idempotent), read, list, cancel, and statistics."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import case, extract, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import JOB_STATUSES, JOB_TERMINAL_STATUSES, Edit, Job, StateEvent, new_uuid, utcnow
from service.jobs.queue import JobQueue, QueueUnavailable
from service.problems import cancelled_problem
from service.usecases.errors import (
    ConflictError,
    IdempotencyConflict,
    InvalidRequest,
    NotFoundError,
    QueueFull,
)
from service.usecases.kinds import KINDS
from service.usecases.pagination import Page, paginate
from service.usecases.validation import Limits, contains_nul, validate_payload

log = logging.getLogger(__name__)


def is_terminal(job: Job) -> bool:
    """Whether the job has finished (succeeded, failed or cancelled)."""
    return job.status in JOB_TERMINAL_STATUSES


def request_hash(kind: str, data: Mapping[str, Any]) -> str:
    """The sha256 of a canonical JSON rendering of a request, to recognise idempotent replays."""
    raw = json.dumps({"kind": kind, "request": data}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()


def enqueue_after_commit(queue: JobQueue, job: Job) -> bool:
    """Enqueue a committed job on its model's queue; a failure is logged, not raised (a sweep re-enqueues it)."""
    try:
        queue.for_model(job.base_model).enqueue(job.id)
    except QueueUnavailable as exc:
        log.warning("job %s committed but not enqueued (a sweep will re-enqueue it): %s", job.id, exc)
        return False
    return True


def queued_count(session: Session) -> int:
    """Jobs waiting in the database (the queue's truth, whatever the transport holds)."""
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued")) or 0)


def check_capacity(session: Session, limits: Limits) -> None:
    """Raise :class:`QueueFull` when ``max_queue_depth`` jobs already wait."""
    depth = queued_count(session)
    if depth >= limits.max_queue_depth:
        raise QueueFull(depth, limits.max_queue_depth)


def scoped_idempotency_key(principal: str, key: str) -> str:
    """The stored form of an ``Idempotency-Key``: who sent it and the key's sha256 (so any key fits).

    Keys of different principals (API key ids, or ``anonymous``) never meet.
    """
    return f"{principal}:{hashlib.sha256(key.encode()).hexdigest()}"


def idempotent_use(session: Session, key: str) -> Job | StateEvent | None:
    """What the earlier request with the scoped ``key`` made: a job, an apply/revert event, or nothing.

    A key is unique within each table; looking in both keeps it to one request across them too.
    """
    job = session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()
    if job is not None:
        return job
    return session.scalars(select(StateEvent).where(StateEvent.idempotency_key == key)).one_or_none()


def idempotency_reused(used: Job | StateEvent) -> IdempotencyConflict:
    """The error for a key that ``used`` already holds, naming what it was used for."""
    what = f"{used.kind} job {used.id}" if isinstance(used, Job) else f"{used.action} of edit {used.edit_id}"
    return IdempotencyConflict(f"the Idempotency-Key was already used for a different request (the {what})")


def find_idempotent(session: Session, key: str, kind: str, req_hash: str) -> Job | None:
    """The job an earlier request with ``key`` created, or None; a key used for another request raises."""
    used = idempotent_use(session, key)
    if used is None:
        return None
    if isinstance(used, Job) and used.kind == kind and used.request_hash == req_hash:
        return used
    raise idempotency_reused(used)


def new_job(kind: str, payload: dict[str, Any], limits: Limits, key: str | None, req_hash: str) -> Job:
    """A queued job row for the limits' model (not yet added to a session)."""
    return Job(
        id=new_uuid(),
        kind=kind,
        base_model=limits.model,
        payload=payload,
        status="queued",
        progress={"step": 0, "total": None, "message": "queued"},
        attempts=0,
        max_attempts=limits.max_job_attempts,
        cancel_requested=False,
        idempotency_key=key or None,  # an empty key is no key (the column is unique)
        request_hash=req_hash,
        created_at=utcnow(),
    )


def submit_job(
    session: Session,
    queue: JobQueue,
    kind: str,
    payload: Mapping[str, Any],
    *,
    limits: Limits | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Validate ``payload`` for the declared ``kind`` (any but ``edit``), commit a queued job of the limits'
    model, then enqueue it on that model's queue.

    A replay with the same ``idempotency_key`` and request returns the first job unchanged.
    Raises :class:`InvalidRequest`, :class:`QueueFull` or :class:`IdempotencyConflict` before writing.
    """
    limits = limits or Limits()
    data = validate_payload(KINDS[kind], payload, limits)
    req_hash = request_hash(kind, {"base_model": limits.model, **data})
    if idempotency_key and (existing := find_idempotent(session, idempotency_key, kind, req_hash)):
        return existing
    check_capacity(session, limits)
    job = new_job(kind, data, limits, idempotency_key, req_hash)
    session.add(job)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key and (existing := find_idempotent(session, idempotency_key, kind, req_hash)):
            return existing
        raise
    enqueue_after_commit(queue, job)
    return job


def get_job(session: Session, job_id: str, kinds: Sequence[str] | None = None) -> Job:
    """The job ``job_id`` (fresh from the database), restricted to ``kinds`` if given; else NotFoundError."""
    job = None if contains_nul(job_id) else session.get(Job, job_id, populate_existing=True)
    if job is None or (kinds is not None and job.kind not in kinds):
        raise NotFoundError(f"job {job_id} not found")
    return job


def list_jobs(
    session: Session,
    *,
    status: str | None = None,
    kind: str | None = None,
    kinds: Sequence[str] | None = None,
    base_model: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Job]:
    """Jobs newest first, optionally filtered by status, kind and model (``kinds`` restricts further)."""
    errors = []
    if status is not None and status not in JOB_STATUSES:
        errors.append({"loc": ["query", "status"], "msg": f"must be one of {list(JOB_STATUSES)}", "type": "enum"})
    if kind is not None and kind not in KINDS:
        errors.append({"loc": ["query", "kind"], "msg": f"must be one of {list(KINDS)}", "type": "enum"})
    if errors:
        raise InvalidRequest(errors)
    stmt = select(Job)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if kind is not None:
        stmt = stmt.where(Job.kind == kind)
    if kinds is not None:
        stmt = stmt.where(Job.kind.in_(kinds))
    if base_model is not None:
        stmt = stmt.where(Job.base_model == base_model)
    return paginate(session, stmt, Job, cursor, limit)


def _cancel_queued(session: Session, job: Job) -> bool:
    now = utcnow()
    error = cancelled_problem("cancelled before a worker ran it")
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "queued")
        .values(
            status="cancelled",
            cancel_requested=True,
            finished_at=now,
            error=error,
            progress={**(job.progress or {}), "message": "cancelled"},
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    if job.kind == "edit":
        session.execute(
            update(Edit)
            .where(Edit.job_id == job.id, Edit.status == "pending")
            .values(status="failed", error=error, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return True


def _request_cancel(session: Session, job: Job) -> bool:
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.commit()
    return True


def cancel_job(session: Session, job_id: str) -> Job:
    """Cancel a queued job now, or flag a running one (its worker stops between steps).

    Returns the job as it is afterwards: ``cancelled``, or ``running`` with ``cancel_requested``.
    A cancelled queued ``edit`` job also fails its pending edit. Raises :class:`NotFoundError`, or
    :class:`ConflictError` when the job has already finished.
    """
    for _ in range(5):  # each lost race means the status moved on; re-read and decide again
        job = get_job(session, job_id)
        if job.status == "queued" and _cancel_queued(session, job):
            return get_job(session, job_id)
        if job.status == "running" and _request_cancel(session, job):
            return get_job(session, job_id)
        if is_terminal(job):
            session.rollback()
            raise ConflictError(f"job {job_id} has already finished (status {job.status})")
    raise ConflictError(f"job {job_id} changed status concurrently; retry")


def job_counts(session: Session) -> dict[tuple[str, str], int]:
    """The number of jobs per (kind, status)."""
    rows = session.execute(select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status))
    return {(kind, status): int(n) for kind, status, n in rows}


def job_duration_stats(session: Session, buckets: Sequence[float]) -> list[tuple[str, str, list[int], int, float]]:
    """Per (kind, status) of finished jobs: cumulative counts ``<= bucket``, count, and sum of seconds.

    A job's duration runs from ``started_at`` (or ``finished_at`` if it never started) to
    ``finished_at``; aggregated in SQL so no job rows are loaded.
    """
    start = func.coalesce(Job.started_at, Job.finished_at)
    if session.get_bind().dialect.name == "postgresql":
        seconds: Any = extract("epoch", Job.finished_at - start)
    else:
        seconds = (func.julianday(Job.finished_at) - func.julianday(start)) * 86400.0
    columns = [func.sum(case((seconds <= b, 1), else_=0)) for b in buckets]
    stmt = (
        select(Job.kind, Job.status, func.count(), func.sum(seconds), *columns)
        .where(Job.finished_at.is_not(None))
        .group_by(Job.kind, Job.status)
    )
    out = []
    for kind, status, count, total, *cumulative in session.execute(stmt):
        out.append((kind, status, [int(c or 0) for c in cumulative], int(count), float(total or 0.0)))
    return out
