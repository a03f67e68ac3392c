"""``/v1/score`` and ``/v1/generate``: query the current (edited) model through a job, waiting for it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from api.auth import AuthorizedRoute
from api.deps import IdempotencyDep
from api.routers import jobrun
from api.schemas import GenerateOut, JobOut, ScoreOut, problems
from service.db.models import Job
from service.jobs.payloads import GeneratePayload, ScorePayload

router = APIRouter(prefix="/v1", tags=["query"], route_class=AuthorizedRoute)

PreferHeader = Annotated[str | None, Header(description="`wait=N`: wait at most N seconds (default: the cap).")]
_RESPONSES = {202: {"model": JobOut, "description": "Still running; poll the job."}} | problems(
    400, 409, 413, 422, 429, 500, 503
)


async def _answer(
    request: Request, kind: str, body: ScorePayload | GeneratePayload, prefer: str | None, key: str | None
) -> JSONResponse:
    job: Job = await jobrun.submit(request, kind, body, key)
    job, headers = await jobrun.wait(request, job, prefer, default=request.app.state.settings.max_wait_seconds)
    if job.status == "succeeded":
        return JSONResponse({**(job.result or {}), "job_id": job.id}, status_code=200, headers=headers)
    if job.status in ("failed", "cancelled"):
        return jobrun.failure(request, job, headers)
    return jobrun.accepted(job, headers, analysis=False)


@router.post("/score", response_model=ScoreOut, responses=_RESPONSES)
async def score(
    body: ScorePayload, request: Request, idempotency_key: IdempotencyDep, prefer: PreferHeader = None
) -> JSONResponse:
    """The probability of each answer after the prompt, on the current (edited) model."""
    return await _answer(request, "score", body, prefer, idempotency_key)


@router.post("/generate", response_model=GenerateOut, responses=_RESPONSES)
async def generate(
    body: GeneratePayload, request: Request, idempotency_key: IdempotencyDep, prefer: PreferHeader = None
) -> JSONResponse:
    """Greedy continuation of the prompt on the current (edited) model."""
    return await _answer(request, "generate", body, prefer, idempotency_key)
