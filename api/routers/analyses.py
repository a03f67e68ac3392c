"""``/v1/analyses``: a route for each analysis kind declared in :mod:`service.usecases.kinds`; their jobs and plots."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import AuthorizedRoute
from api.deps import IdempotencyDep, SessionDep
from api.plots import PLOT_RESPONSES, FormatPath, image, not_finished, not_plottable
from api.routers import jobrun
from api.schemas import AnalysisAccepted, JobOut, finished_job_model, job_out, problems
from service.engine.inputs import default_band
from service.plots import plot_analysis
from service.usecases.jobs import get_job, is_terminal
from service.usecases.kinds import ANALYSIS_KINDS, JobKind, kinds_of

router = APIRouter(prefix="/v1/analyses", tags=["analyses"], route_class=AuthorizedRoute)

PreferHeader = Annotated[str | None, Header(description="`wait=N`: hold the request up to N seconds.")]
_RESPONSES = problems(400, 413, 422, 429, 503)


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


def _add_route(kind: JobKind) -> None:
    """``POST /v1/analyses/<kind>``: the kind's payload in, 202 (or the finished job, typed by its result) out."""

    async def endpoint(body: BaseModel, submit: SubmitDep) -> JSONResponse:
        return await submit(kind.name, body)

    finished = {200: {"model": finished_job_model(kind), "description": "Finished within `Prefer: wait`."}}
    jobrun.add_route(
        router, kind, endpoint, status_code=202, response_model=AnalysisAccepted, responses=finished | _RESPONSES
    )


for _kind in kinds_of("analysis"):
    _add_route(_kind)


@router.get("/{job_id}", response_model=JobOut, responses=problems(404, 422, 503))
def read_analysis(job_id: str, session: SessionDep) -> JobOut:
    """An analysis job: status, progress, and its result or error."""
    return job_out(get_job(session, job_id, kinds=ANALYSIS_KINDS))


@router.get("/{job_id}/plot.{fmt}", response_class=Response, responses=PLOT_RESPONSES)
def plot_analysis_route(job_id: str, fmt: FormatPath, session: SessionDep) -> Response:
    """A finished analysis as a PNG or SVG figure.

    Logit lens: p and rank of each target per layer, each layer's top-1 token beside it. Locating:
    Δp(answer) per layer, site and position, with the default edit band outlined. Intervention:
    p(answer) per edited layer against its control. Compositionality: each hop's accuracy and the gap.
    """
    job = get_job(session, job_id, kinds=ANALYSIS_KINDS)
    if not is_terminal(job):
        raise not_finished(f"analysis {job.id}", job.status, field="job_status")
    result = job.result
    if job.status != "succeeded" or not isinstance(result, dict):
        raise not_plottable(f"analysis {job.id} {job.status}: it has no result to plot", job.status, field="job_status")
    band = _default_band(job.base_model, result) if job.kind == "locate" else None
    return image(lambda: plot_analysis(job.kind, result, fmt, edit_band=band), fmt, job.status, field="job_status")


def _default_band(model: str, result: dict[str, Any]) -> list[int] | None:
    """The default edit band of ``model``, whose every layer a locating result covers; None if it names none."""
    layers = result.get("layers")
    if not isinstance(layers, list) or not layers or not all(type(layer) is int for layer in layers):
        return None
    return default_band(model, max(layers) + 1)
