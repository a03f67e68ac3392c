"""Use-cases over the database and the queue, shared by the HTTP gateway and the command line.

Nothing here imports FastAPI; failures are the exceptions of :mod:`service.usecases.errors`.
"""

from service.usecases.edits import change_state, get_delta, get_edit, list_edits, submit_edit
from service.usecases.errors import (
    ConflictError,
    IdempotencyConflict,
    InvalidRequest,
    NotFoundError,
    PreconditionFailed,
    QueueFull,
    UseCaseError,
)
from service.usecases.jobs import cancel_job, get_job, is_terminal, list_jobs, queued_count, submit_job
from service.usecases.kinds import ANALYSIS_KINDS, KINDS, JobKind
from service.usecases.model import ModelStatus, WorkerStatus, model_status, ping_database
from service.usecases.pagination import Page
from service.usecases.validation import EditRequest, Limits, validate_edit_request, validate_payload

__all__ = [
    "ANALYSIS_KINDS",
    "KINDS",
    "ConflictError",
    "EditRequest",
    "IdempotencyConflict",
    "InvalidRequest",
    "JobKind",
    "Limits",
    "ModelStatus",
    "NotFoundError",
    "Page",
    "PreconditionFailed",
    "QueueFull",
    "UseCaseError",
    "WorkerStatus",
    "cancel_job",
    "change_state",
    "get_delta",
    "get_edit",
    "get_job",
    "is_terminal",
    "list_edits",
    "list_jobs",
    "model_status",
    "ping_database",
    "queued_count",
    "submit_edit",
    "submit_job",
    "validate_edit_request",
    "validate_payload",
]
