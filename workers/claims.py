"""The job lifecycle in the database: claims, leases, progress, outcomes and the sweep.

The ``jobs`` row is the truth; the queue only says "look at job X". Every transition here is one
conditional ``UPDATE`` (``... WHERE status = ? AND claimed_by = ?``), so two workers racing for a
job, or a worker racing the sweep, can never both win. Each public function that writes commits
its own transaction on the caller's session (pass one with no pending changes), except
:func:`lock_claim` and :func:`mark_edit_failed`, which join the caller's transaction.

For a *queued* row, ``lease_expires_at`` is the sweep's re-enqueue lease: the time until which
the last enqueue is presumed to be in the queue, so concurrent sweeps of several workers
re-enqueue a lost job once rather than once each.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, or_, select, update
from sqlalchemy.orm import Session

from service.db.models import JOB_TERMINAL_STATUSES, Edit, Job, utcnow
from service.jobs.queue import JobQueue, QueueUnavailable
from service.problems import cancelled_problem, problem

log = logging.getLogger(__name__)

STALE_QUEUED_SECONDS = 5.0
REQUEUE_INTERVAL_SECONDS = 30.0
OUTCOME_REASON_CHARS = 200  # of a failed job's progress message (the whole reason is in its error)


class ClaimLost(RuntimeError):
    """This worker no longer holds the job (lease expired and the sweep moved it on)."""


def outcome_progress(progress: dict[str, Any] | None, status: str, error: dict[str, Any] | None) -> dict[str, Any]:
    """``progress`` (step and total kept) with a message that says how the job ended."""
    if status == "succeeded":
        message = "done"
    elif status == "cancelled":
        message = "cancelled"
    else:
        reason = str((error or {}).get("detail") or (error or {}).get("title") or "no reason recorded")
        if len(reason) > OUTCOME_REASON_CHARS:
            reason = reason[: OUTCOME_REASON_CHARS - 1] + "…"
        message = "failed: " + reason
    return {**_message(""), **(progress or {}), "message": message}


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _claimed(job_id: str, worker_id: str) -> tuple[Any, ...]:
    return (Job.id == job_id, Job.claimed_by == worker_id, Job.status == "running")


def _commit(session: Session, stmt: Any) -> int:
    try:
        count = _rowcount(session.execute(stmt.execution_options(synchronize_session=False)))
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return count


def claim(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> Job | None:
    """Take the job for ``worker_id``: queued (or running with an expired lease) → running.

    Counts an attempt and sets the lease. Returns the claimed row, or ``None`` when the job is
    missing, terminal, held by a live lease, out of attempts, or cancelled (a queued job with
    ``cancel_requested`` becomes ``cancelled`` here).
    """
    now = utcnow()
    claimable = or_(Job.status == "queued", (Job.status == "running") & (Job.lease_expires_at < now))
    stmt = (
        update(Job)
        .where(Job.id == job_id, claimable, Job.attempts < Job.max_attempts, Job.cancel_requested.is_(False))
        .values(
            status="running",
            claimed_by=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=now,
            progress={"step": 0, "total": None, "message": f"claimed by {worker_id}"},
        )
    )
    if _commit(session, stmt) == 1:
        return session.get(Job, job_id, populate_existing=True)
    error = cancelled_problem("cancelled before a worker ran it")
    cancel = (
        update(Job)
        .where(Job.id == job_id, claimable, Job.cancel_requested.is_(True))
        .values(status="cancelled", error=error, finished_at=now, lease_expires_at=None, progress=_message("cancelled"))
    )
    if _commit(session, cancel) == 1:
        _fail_edit_of(session, job_id, error)
    return None


def _message(text: str, step: int = 0, total: int | None = None) -> dict[str, Any]:
    return {"step": step, "total": total, "message": text}


def extend_lease(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> bool:
    """Push the lease forward; False if ``worker_id`` no longer holds the job."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    return _commit(session, update(Job).where(*_claimed(job_id, worker_id)).values(lease_expires_at=expires)) == 1


def report_progress(session: Session, job_id: str, worker_id: str, step: int, total: int | None, message: str) -> bool:
    """Record progress; False if ``worker_id`` no longer holds the job."""
    stmt = update(Job).where(*_claimed(job_id, worker_id)).values(progress=_message(message, step, total))
    return _commit(session, stmt) == 1


def lock_claim(session: Session, job_id: str, worker_id: str) -> bool:
    """Touch the row if ``worker_id`` still holds it, inside the caller's transaction (no commit).

    On Postgres the row stays locked until the caller commits, so results written in the same
    transaction land only while the claim is held.
    """
    stmt = update(Job).where(*_claimed(job_id, worker_id)).values(claimed_by=worker_id)
    return _rowcount(session.execute(stmt.execution_options(synchronize_session=False))) == 1


def is_cancel_requested(session: Session, job_id: str) -> bool:
    """Whether someone asked to cancel the job (a missing job counts as cancelled)."""
    flag = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return True if flag is None else bool(flag)


def finish(
    session: Session,
    job_id: str,
    worker_id: str,
    *,
    status: str,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> bool:
    """Record the outcome (a terminal ``status``) and its progress message if ``worker_id`` still holds the job.

    A failed or cancelled edit job also fails its edit unless the edit got past computing; the
    edit gets the job's ``error`` (a cancelled job without one: :func:`cancelled_problem`).
    """
    if status not in JOB_TERMINAL_STATUSES:
        raise ValueError(f"finish needs a terminal status, not {status!r}")
    if status == "cancelled" and error is None:
        error = cancelled_problem("cancelled")
    now = utcnow()
    progress = session.scalar(select(Job.progress).where(*_claimed(job_id, worker_id)))
    stmt = (
        update(Job)
        .where(*_claimed(job_id, worker_id))
        .values(
            status=status,
            result=result,
            error=error,
            finished_at=now,
            lease_expires_at=None,
            progress=outcome_progress(progress, status, error),
        )
    )
    if _commit(session, stmt) != 1:
        return False
    if status != "succeeded":
        _fail_edit_of(session, job_id, error or problem("job-failed", "job failed", 500, "the job failed"))
    return True


def release(session: Session, job_id: str, worker_id: str) -> bool:
    """Give a held job back (worker shutting down): running → queued, the attempt is not counted."""
    stmt = (
        update(Job)
        .where(*_claimed(job_id, worker_id))
        .values(
            status="queued",
            claimed_by=None,
            lease_expires_at=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            progress=_message(f"released by {worker_id}"),
        )
    )
    if _commit(session, stmt) != 1:
        return False
    _reset_edit_of(session, job_id)
    return True


def mark_edit_failed(
    session: Session, edit_id: str, error: dict[str, Any], *, from_statuses: tuple[str, ...] = ("pending", "computing")
) -> bool:
    """Set the edit's status to failed with ``error`` if it is in ``from_statuses`` (no commit)."""
    stmt = (
        update(Edit)
        .where(Edit.id == edit_id, Edit.status.in_(from_statuses))
        .values(status="failed", error=error, updated_at=utcnow())
    )
    return _rowcount(session.execute(stmt.execution_options(synchronize_session=False))) == 1


def _edit_id_of(session: Session, job_id: str) -> str | None:
    row = session.execute(select(Job.kind, Job.payload).where(Job.id == job_id)).one_or_none()
    if row is None or row.kind != "edit" or not isinstance(row.payload, dict):
        return None
    edit_id = row.payload.get("edit_id")
    return edit_id if isinstance(edit_id, str) else None


def _fail_edit_of(session: Session, job_id: str, error: dict[str, Any]) -> None:
    try:
        edit_id = _edit_id_of(session, job_id)
        if edit_id is not None:
            mark_edit_failed(session, edit_id, error)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _reset_edit_of(session: Session, job_id: str) -> None:
    try:
        edit_id = _edit_id_of(session, job_id)
        if edit_id is not None:
            session.execute(
                update(Edit)
                .where(Edit.id == edit_id, Edit.status == "computing")
                .values(status="pending", updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        session.commit()
    except BaseException:
        session.rollback()
        raise


@dataclass
class SweepReport:
    """What one sweep did, by job id."""

    requeued: list[str] = field(default_factory=list)  # queued rows the queue seemed to have lost
    retried: list[str] = field(default_factory=list)  # running rows with an expired lease → queued
    failed: list[str] = field(default_factory=list)  # out of attempts
    cancelled: list[str] = field(default_factory=list)
    enqueue_failed: list[str] = field(default_factory=list)  # left queued for the next sweep


def sweep(
    session: Session,
    queue: JobQueue,
    now: datetime | None = None,
    *,
    base_model: str,
    stale_seconds: float = STALE_QUEUED_SECONDS,
    requeue_interval: float = REQUEUE_INTERVAL_SECONDS,
) -> SweepReport:
    """Repair what a lost queue entry or a dead worker left behind among the jobs of ``base_model``, whose
    queue ``queue`` is; safe to run on every worker of that model.

    Running jobs whose lease expired go back to ``queued`` and are re-enqueued while attempts
    remain, else fail with a "job abandoned" problem (their edit fails too). Queued rows older
    than ``stale_seconds`` are re-enqueued when the queue holds fewer entries than there are
    queued and running jobs (it lost some), at most once per ``requeue_interval`` per job.
    """
    now = now or utcnow()
    report = SweepReport()
    marker = now + timedelta(seconds=requeue_interval)
    to_enqueue = _sweep_expired(session, base_model, now, marker, report)
    to_enqueue += _sweep_queued(session, queue, base_model, now, marker, stale_seconds, report)
    for job_id in to_enqueue:
        try:
            queue.enqueue(job_id)
        except QueueUnavailable as exc:
            log.warning("sweep could not enqueue job %s: %s", job_id, exc)
            report.enqueue_failed.append(job_id)
    return report


def _ended(status: str, error: dict[str, Any], progress: dict[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The column values of a job the sweep ends with ``status``."""
    return {
        "status": status,
        "error": error,
        "finished_at": now,
        "lease_expires_at": None,
        "progress": outcome_progress(progress, status, error),
    }


def _sweep_expired(
    session: Session, base_model: str, now: datetime, marker: datetime, report: SweepReport
) -> list[str]:
    rows = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts, Job.claimed_by, Job.cancel_requested, Job.progress).where(
            Job.base_model == base_model, Job.status == "running", Job.lease_expires_at < now
        )
    ).all()
    session.rollback()
    retried: list[str] = []
    for row in rows:
        guard = (
            Job.id == row.id,
            Job.status == "running",
            Job.lease_expires_at < now,
            Job.claimed_by == row.claimed_by,
        )
        if row.cancel_requested:
            error = cancelled_problem(f"cancelled while worker {row.claimed_by} had stopped heartbeating")
            if _commit(session, update(Job).where(*guard).values(**_ended("cancelled", error, row.progress, now))) == 1:
                report.cancelled.append(row.id)
                _fail_edit_of(session, row.id, error)
        elif row.attempts < row.max_attempts:
            note = _message(f"requeued: worker {row.claimed_by} stopped heartbeating")
            values = {"status": "queued", "claimed_by": None, "lease_expires_at": marker, "progress": note}
            if _commit(session, update(Job).where(*guard).values(**values)) == 1:
                report.retried.append(row.id)
                retried.append(row.id)
                _reset_edit_of(session, row.id)
        else:
            detail = f"worker {row.claimed_by} stopped heartbeating after {row.attempts} attempts"
            error = problem("job-abandoned", "job abandoned", 500, detail)
            if _commit(session, update(Job).where(*guard).values(**_ended("failed", error, row.progress, now))) == 1:
                report.failed.append(row.id)
                _fail_edit_of(session, row.id, error)
    return retried


def _sweep_queued(
    session: Session,
    queue: JobQueue,
    base_model: str,
    now: datetime,
    marker: datetime,
    stale_seconds: float,
    report: SweepReport,
) -> list[str]:
    stale = select(Job.id, Job.attempts, Job.max_attempts, Job.cancel_requested, Job.progress).where(
        Job.base_model == base_model,
        Job.status == "queued",
        Job.created_at < now - timedelta(seconds=stale_seconds),
        or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now),
    )
    rows = session.execute(stale.order_by(Job.created_at)).all()
    mine = (Job.base_model == base_model, Job.status.in_(("queued", "running")))
    live = session.scalar(select(func.count()).select_from(Job).where(*mine)) or 0
    session.rollback()
    if not rows:
        return []
    guard = (Job.status == "queued", or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now))
    try:
        lost = queue.depth() < live
    except QueueUnavailable as exc:
        log.warning("sweep cannot read the queue depth: %s", exc)
        lost = False
    requeued: list[str] = []
    for row in rows:
        pick = update(Job).where(Job.id == row.id, *guard)
        if row.cancel_requested:
            error = cancelled_problem("cancelled before a worker ran it")
            if _commit(session, pick.values(**_ended("cancelled", error, row.progress, now))) == 1:
                report.cancelled.append(row.id)
                _fail_edit_of(session, row.id, error)
        elif row.attempts >= row.max_attempts:
            error = problem("job-abandoned", "job abandoned", 500, f"no attempts left after {row.attempts}")
            if _commit(session, pick.values(**_ended("failed", error, row.progress, now))) == 1:
                report.failed.append(row.id)
                _fail_edit_of(session, row.id, error)
        elif lost and _commit(session, pick.values(lease_expires_at=marker)) == 1:
            report.requeued.append(row.id)
            requeued.append(row.id)
    return requeued
