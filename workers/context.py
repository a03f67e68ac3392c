"""What a job gets from its worker, and how its failures are recorded."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.engine.context import EditContext
from service.engine.delta import InvalidDeltaError
from service.engine.infer import InferenceError
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from service.jobs.queue import JobQueue
from service.problems import inference_failed_problem, problem
from service.settings import Settings
from service.usecases.errors import NotFoundError
from workers.claims import ClaimLost, is_cancel_requested, report_progress
from workers.reconcile import Reconciler

log = logging.getLogger(__name__)

# The database (or the connection to it) failed: no verdict on the job, which is retried once its lease expires.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)


class JobError(Exception):
    """A job failure with a ready problem object (bad input, wrong model, edit already failed)."""

    def __init__(self, problem_obj: dict[str, Any]) -> None:
        super().__init__(problem_obj["detail"])
        self.problem = problem_obj


def _never() -> bool:
    return False


@dataclass
class JobContext:
    """What a job needs from its worker; ``should_stop`` is true when the worker is shutting down
    or has lost the claim (an edit then stops at the next layer)."""

    lm: LoadedModel
    weights: WeightState
    session_factory: sessionmaker[Session]
    queue: JobQueue
    worker_id: str
    settings: Settings
    reconciler: Reconciler
    should_stop: Callable[[], bool] = _never
    edit_context: EditContext = field(init=False)

    def __post_init__(self) -> None:
        self.edit_context = EditContext(self.lm, self.weights, self.settings.cache_dir)


def problem_for(exc: BaseException) -> dict[str, Any]:
    """The RFC 9457-like problem object recorded for a job that raised ``exc``."""
    if isinstance(exc, JobError):
        return exc.problem
    if isinstance(exc, ValidationError):
        return problem("invalid-payload", "invalid job payload", 422, str(exc))
    if isinstance(exc, InvalidDeltaError):
        return problem("delta-rejected", "delta rejected", 422, str(exc))
    if isinstance(exc, NotFoundError):
        return problem("not-found", "not found", 404, str(exc))
    if isinstance(exc, InferenceError):
        return inference_failed_problem(exc.step, exc.prompt, exc.continuation, str(exc))
    if isinstance(exc, ValueError):
        return problem("invalid-input", "invalid job input", 422, str(exc))
    return problem("job-failed", "job failed", 500, f"{type(exc).__name__}: {exc}")


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (Postgres JSON rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def progress(ctx: JobContext, job: Job, step: int, total: int | None, message: str) -> None:
    """Record the job's progress (best effort); :class:`~workers.claims.ClaimLost` if the claim is gone."""
    try:
        with ctx.session_factory() as session:
            held = report_progress(session, job.id, ctx.worker_id, step, total, message)
    except SQLAlchemyError as exc:  # progress is best effort; the claim is checked again on write
        log.warning("job %s: could not record progress: %s", job.id, exc)
        return
    if not held:
        raise ClaimLost(f"job {job.id} is no longer held by {ctx.worker_id}")


def cancelled(ctx: JobContext, job: Job) -> bool:
    """Whether the job should stop: the worker is stopping or lost the claim, or someone asked to cancel."""
    if ctx.should_stop():
        return True
    try:
        with ctx.session_factory() as session:
            return is_cancel_requested(session, job.id)
    except SQLAlchemyError as exc:
        log.warning("job %s: could not read the cancel flag: %s", job.id, exc)
        return False
