"""``/v1/model`` and ``/v1/models``: the base models served, their desired state and whether the workers reached it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response

from api.auth import AuthorizedRoute
from api.deps import SessionDep, SettingsDep
from api.http import version_etag
from api.schemas import ModelList, ModelOut, model_out, model_query, problems
from service.usecases.errors import NotFoundError
from service.usecases.model import model_status, served_models

router = APIRouter(prefix="/v1", tags=["model"], route_class=AuthorizedRoute)

ModelQuery = Annotated[
    str | None, model_query("The base model; left out: the only one served, else the gateway's own.")
]


@router.get("/models", response_model=ModelList, responses=problems(503))
def list_models(session: SessionDep, settings: SettingsDep) -> ModelList:
    """The base models served (a live worker holds them): the gateway's own first, even unserved, then by name."""
    served = served_models(session, settings.worker_lease_seconds)
    own = next((s for s in served if s.base_model == settings.model), None)
    own = own or model_status(session, settings.model, settings.worker_lease_seconds)
    others = [s for s in served if s.base_model != settings.model]
    return ModelList(items=[model_out(status) for status in (own, *others)])


@router.get("/model", response_model=ModelOut, responses=problems(404, 422, 503))
def read_model(session: SessionDep, settings: SettingsDep, response: Response, model: ModelQuery = None) -> ModelOut:
    """A base model, its fingerprint, state version, active edits, each worker's version, converged or not.

    Without ``model``: the only model served; with several served, the gateway's own (``CREME_MODEL``).
    """
    lease = settings.worker_lease_seconds
    if model is None:
        served = [s.base_model for s in served_models(session, lease)]
        model = served[0] if len(served) == 1 else settings.model
    status = model_status(session, model, lease)
    if model != settings.model and not status.workers and not status.state_version:
        raise NotFoundError(f"model {model!r} has never been served here")
    response.headers["ETag"] = version_etag(status.state_version)
    return model_out(status)
