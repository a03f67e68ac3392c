"""``/v1/<query>``: a route for each query kind declared in :mod:`service.usecases.kinds` (``/v1/score``,
``/v1/generate``), which asks the current (edited) model through a job and waits for it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import AuthorizedRoute
from api.deps import IdempotencyDep
from api.routers import jobrun
from api.schemas import JobOut, answer_model, problems
from service.db.models import Job
from service.usecases.kinds import JobKind, kinds_of

router = APIRouter(prefix="/v1", tags=["query"], route_class=AuthorizedRoute)

PreferHeader = Annotated[str | None, Header(description="`wait=N`: wait at most N seconds (default: the cap).")]
_RESPONSES = {202: {"model": JobOut, "description": "Still running; poll the job."}} | problems(
    400, 409, 413, 422, 429, 500, 503
)


async def _answer(request: Request, kind: str, body: BaseModel, prefer: str | None, key: str | None) -> JSONResponse:
    job: Job = await jobrun.submit(request, kind, body, key)
    job, headers = await jobrun.wait(request, job, prefer, default=request.app.state.settings.max_wait_seconds)
    if job.status == "succeeded":
        return JSONResponse({**(job.result or {}), "job_id": job.id}, status_code=200, headers=headers)
    if job.status in ("failed", "cancelled"):
        return jobrun.failure(request, job, headers)
    return jobrun.accepted(job, headers, analysis=False)


def _add_route(kind: JobKind) -> None:
    """``POST /v1/<kind>``: the kind's payload in, its result (or the job, still running) out."""

    async def endpoint(
        body: BaseModel, request: Request, idempotency_key: IdempotencyDep, prefer: PreferHeader = None
    ) -> JSONResponse:
        return await _answer(request, kind.name, body, prefer, idempotency_key)

    jobrun.add_route(router, kind, endpoint, response_model=answer_model(kind), responses=_RESPONSES)


for _kind in kinds_of("query"):
    _add_route(_kind)
