"""``/v1/model``: the desired model state and whether the workers have reached it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.auth import AuthorizedRoute
from api.deps import SessionDep, SettingsDep
from api.http import version_etag
from api.schemas import ModelOut, model_out, problems
from service.usecases.model import model_status

router = APIRouter(prefix="/v1/model", tags=["model"], route_class=AuthorizedRoute)


@router.get("", response_model=ModelOut, responses=problems(503))
def read_model(session: SessionDep, settings: SettingsDep, response: Response) -> ModelOut:
    """Base model, fingerprint, state version, active edits, each worker's version, converged or not."""
    status = model_status(session, settings.model, settings.worker_lease_seconds)
    response.headers["ETag"] = version_etag(status.state_version)
    return model_out(status)
