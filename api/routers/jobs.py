"""``/v1/jobs``: status, progress, result or error of any job; cancellation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from api.auth import AuthorizedRoute
from api.deps import SessionDep
from api.schemas import JobOut, JobPage, JobStatus, KindName, job_out, model_query, problems
from service.usecases.jobs import cancel_job, get_job, list_jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=AuthorizedRoute)


@router.get("", response_model=JobPage, responses=problems(422, 503))
def list_jobs_route(
    session: SessionDep,
    status: JobStatus | None = None,
    kind: KindName | None = None,
    model: Annotated[str | None, model_query("Only the jobs of this base model.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobPage:
    """Jobs newest first, optionally filtered by status, kind and model."""
    page = list_jobs(session, status=status, kind=kind, base_model=model, cursor=cursor, limit=limit)
    return JobPage(items=[job_out(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=problems(404, 422, 503))
def read_job(job_id: str, session: SessionDep) -> JobOut:
    """One job: status, progress, attempts, and its result or error."""
    return job_out(get_job(session, job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    responses={202: {"model": JobOut, "description": "Running: cancellation requested."}}
    | problems(404, 409, 422, 503),
)
def cancel_job_route(job_id: str, session: SessionDep) -> JSONResponse:
    """Cancel a queued job now (200), or ask a running one to stop between steps (202)."""
    job = cancel_job(session, job_id)
    status = 200 if job.status == "cancelled" else 202
    return JSONResponse(job_out(job).model_dump(mode="json"), status_code=status)
