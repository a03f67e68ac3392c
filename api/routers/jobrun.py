"""The routes of the declared job kinds: registering one, submitting its job, answering with its outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from api.deps import model_limits
from api.errors import PROBLEM_MEDIA_TYPE
from api.http import in_session, parse_prefer_wait, wait_for_job
from api.schemas import AnalysisAccepted, job_out, job_url, request_model
from service.db.models import Job
from service.problems import CANCELLED, problem_type
from service.usecases.jobs import submit_job
from service.usecases.kinds import JobKind

_JOB_STATUS_PROBLEM = {"failed": 500, "cancelled": 409}


def add_route(
    router: APIRouter, kind: JobKind, endpoint: Callable[..., Awaitable[JSONResponse]], **options: Any
) -> None:
    """Register ``endpoint`` as ``POST <prefix>/<kind name>``: its ``body`` typed by the kind's payload
    and the ``model`` it is for, described by the kind's summary; ``options`` are the route's responses
    and status."""
    endpoint.__annotations__["body"] = request_model(kind)
    name = kind.name.replace("-", "_")
    router.add_api_route(f"/{kind.name}", endpoint, methods=["POST"], name=name, description=kind.summary, **options)


async def submit(request: Request, kind: str, body: BaseModel, idempotency_key: str | None) -> Job:
    """Validate and queue a job of ``kind`` for the model ``body`` names, the rest of ``body`` its payload."""
    state = request.app.state
    payload = body.model_dump(mode="json", exclude={"model"})
    model = getattr(body, "model", None)

    def run(session: Session) -> Job:
        limits = model_limits(request, session, model, ("body", "model"))
        return submit_job(session, state.queue, kind, payload, limits=limits, idempotency_key=idempotency_key)

    return await in_session(state.session_factory, run)


async def wait(request: Request, job: Job, prefer: str | None, default: float | None) -> tuple[Job, dict[str, str]]:
    """Wait for ``job`` per ``Prefer: wait`` (else ``default`` seconds), capped at max_wait_seconds."""
    cap = request.app.state.settings.max_wait_seconds
    asked = parse_prefer_wait(prefer)
    headers: dict[str, str] = {"Location": job_url(job)}
    seconds = default if asked is None else asked
    if seconds is None:
        return job, headers
    seconds = min(seconds, cap)
    if asked is not None:
        headers["Preference-Applied"] = f"wait={seconds:g}"
    return await wait_for_job(request.app.state.session_factory, job.id, seconds), headers


def failure(request: Request, job: Job, headers: dict[str, str]) -> JSONResponse:
    """A failed or cancelled job as a problem: the worker's stored problem, with the job id."""
    stored: dict[str, Any] = job.error if isinstance(job.error, dict) else {}
    status = stored.get("status")
    if not (isinstance(status, int) and 400 <= status < 600):
        status = _JOB_STATUS_PROBLEM.get(job.status, 500)
    body = {
        "type": problem_type(CANCELLED if job.status == "cancelled" else f"job-{job.status}"),
        "title": f"Job {job.status}",
        "detail": f"job {job.id} {job.status}",
        **stored,
        "status": status,
        "instance": request.url.path,
        "job_id": job.id,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def accepted(job: Job, headers: dict[str, str], *, analysis: bool) -> JSONResponse:
    """202 with where to poll the job."""
    if analysis:
        body = AnalysisAccepted(id=job.id, kind=job.kind, status=job.status, url=job_url(job))  # type: ignore[arg-type]
        return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)
    return JSONResponse(job_out(job).model_dump(mode="json"), status_code=202, headers=headers)
