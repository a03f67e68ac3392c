"""``/v1/analyses``: Logit Lens, locating, intervention and compositionality-gap jobs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from api.auth import AuthorizedRoute
from api.deps import IdempotencyDep, SessionDep, SettingsDep
from api.plots import PLOT_RESPONSES, FormatPath, image, not_finished, not_plottable
from api.routers import jobrun
from api.schemas import AnalysisAccepted, JobOut, LogitLensJobOut, job_out, problems
from service.engine.inputs import default_band
from service.jobs.payloads import CompositionalityPayload, InterventionPayload, LocatePayload, LogitLensPayload
from service.plots import plot_analysis
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


@router.get("/{job_id}/plot.{fmt}", response_class=Response, responses=PLOT_RESPONSES)
def plot_analysis_route(job_id: str, fmt: FormatPath, session: SessionDep, settings: SettingsDep) -> Response:
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
    band = _default_band(settings.model, result) if job.kind == "locate" else None
    return image(lambda: plot_analysis(job.kind, result, fmt, edit_band=band), fmt, job.status, field="job_status")


def _default_band(model: str, result: dict[str, Any]) -> list[int] | None:
    """The default edit band of ``model``, whose every layer a locating result covers; None if it names none."""
    layers = result.get("layers")
    if not isinstance(layers, list) or not layers or not all(type(layer) is int for layer in layers):
        return None
    return default_band(model, max(layers) + 1)
