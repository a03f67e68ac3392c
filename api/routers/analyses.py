"""``/v1/analyses``: Logit Lens, locating, intervention and compositionality-gap jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import AuthorizedRoute
from api.deps import IdempotencyDep, SessionDep
from api.routers import jobrun
from api.schemas import AnalysisAccepted, JobOut, LogitLensJobOut, job_out, problems
from service.jobs.payloads import CompositionalityPayload, InterventionPayload, LocatePayload, LogitLensPayload
from service.usecases.jobs import ANALYSIS_KINDS, get_job, is_terminal

router = APIRouter(prefix="/v1/analyses", tags=["analyses"], route_class=AuthorizedRoute)

PreferHeader = Annotated[str | None, Header(description="`wait=N`: hold the request up to N seconds.")]
_RESPONSES = {200: {"model": JobOut, "description": "Finished within `Prefer: wait`."}} | problems(
    400, 413, 422, 429, 503
)


def _submitter(
    request: Request, idempotency_key: IdempotencyDep, prefer: PreferHeader = None
) -> Callable[[str, BaseModel], Awaitable[JSONResponse]]:
    """What every analysis route takes besides its body; the routes differ only in the job kind."""

    async def submit(kind: str, body: BaseModel) -> JSONResponse:
        job = await jobrun.submit(request, kind, body, idempotency_key)
        job, headers = await jobrun.wait(request, job, prefer, default=None)
        if is_terminal(job):
            return JSONResponse(job_out(job).model_dump(mode="json"), status_code=200, headers=headers)
        return jobrun.accepted(job, headers, analysis=True)

    return submit


SubmitDep = Annotated[Callable[[str, BaseModel], Awaitable[JSONResponse]], Depends(_submitter)]


@router.post(
    "/logit-lens",
    status_code=202,
    response_model=AnalysisAccepted,
    responses=_RESPONSES | {200: {"model": LogitLensJobOut, "description": "Finished within `Prefer: wait`."}},
)
async def logit_lens(body: LogitLensPayload, submit: SubmitDep) -> JSONResponse:
    """Logit lens: what each layer's residual stream predicts, read out through the unembedding."""
    return await submit("logit-lens", body)


@router.post("/locate", status_code=202, response_model=AnalysisAccepted, responses=_RESPONSES)
async def locate(body: LocatePayload, submit: SubmitDep) -> JSONResponse:
    """Locating: patch activations from the guide run into the failing run to find where to edit."""
    return await submit("locate", body)


@router.post("/intervention", status_code=202, response_model=AnalysisAccepted, responses=_RESPONSES)
async def intervention(body: InterventionPayload, submit: SubmitDep) -> JSONResponse:
    """Intervention: suppress the bridge entity in the residual stream and watch p(answer)."""
    return await submit("intervention", body)


@router.post("/compositionality", status_code=202, response_model=AnalysisAccepted, responses=_RESPONSES)
async def compositionality(body: CompositionalityPayload, submit: SubmitDep) -> JSONResponse:
    """The compositionality gap: cases whose single hops the model answers but whose composition fails."""
    return await submit("compositionality", body)


@router.get("/{job_id}", response_model=JobOut, responses=problems(404, 422, 503))
def read_analysis(job_id: str, session: SessionDep) -> JobOut:
    """An analysis job: status, progress, and its result or error."""
    return job_out(get_job(session, job_id, kinds=ANALYSIS_KINDS))
