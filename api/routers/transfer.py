"""``/v1/edits/{id}/peft`` and ``/v1/edits:import``: an edit out as a PEFT LoRA adapter, a delta file in as an edit.

Both routes parse safetensors with the engine, which imports torch on the first such request (never
when the gateway starts), on the thread pool.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from api.auth import AuthorizedRoute
from api.deps import ActorDep, FactoryDep, SessionDep, SettingsDep
from api.errors import ProblemError
from api.http import in_session
from api.schemas import EditOut, edit_out, edit_url, model_query, problems
from service.usecases.transfer import (
    DeltaCorrupt,
    FingerprintMismatch,
    InvalidDelta,
    UnsupportedExport,
    import_delta,
    peft_archive,
)

router = APIRouter(prefix="/v1/edits", tags=["edits"], route_class=AuthorizedRoute)

DELTA_MEDIA_TYPE = "application/octet-stream"
FormatQuery = Annotated[
    Literal["zip", "tar"], Query(alias="format", description="The archive: `zip` (default) or `tar`.")
]
ModelQuery = Annotated[
    str | None, model_query("The base model; left out: the served one whose fingerprint the delta carries.")
]
_ARCHIVES = {"application/zip": {}, "application/x-tar": {}}
_DELTA_BODY = {
    "required": True,
    "description": "A delta file as `GET /v1/edits/{id}/delta` serves it (safetensors).",
    "content": {DELTA_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
}


@router.get(
    "/{edit_id}/peft",
    response_class=Response,
    responses={200: {"content": _ARCHIVES, "description": "`adapter_config.json` and `adapter_model.safetensors`."}}
    | problems(404, 409, 422, 500, 503),
)
def download_peft(edit_id: str, session: SessionDep, fmt: FormatQuery = "zip") -> Response:
    """The edit as a PEFT LoRA adapter: rank = the delta's, scaling 1, on the edited layers' attention output.

    Load it with ``peft.PeftModel.from_pretrained(base_model, folder)`` once unpacked. Only a
    computed, applied or reverted edit with a stored delta has one (else 409 or 404).
    """
    try:
        archive = peft_archive(session, edit_id, fmt)
    except DeltaCorrupt as exc:
        raise ProblemError(500, str(exc), slug="delta-corrupt", title="Stored delta corrupt") from exc
    except UnsupportedExport as exc:
        raise ProblemError(422, str(exc), slug="unsupported-family", title="Unsupported model family") from exc
    disposition = f'attachment; filename="{archive.filename}"'
    return Response(archive.data, media_type=archive.media_type, headers={"Content-Disposition": disposition})


@router.post(
    ":import",
    status_code=201,
    response_model=EditOut,
    responses=problems(400, 413, 415, 422, 503),
    openapi_extra={"requestBody": _DELTA_BODY},
)
async def import_route(
    request: Request, factory: FactoryDep, settings: SettingsDep, actor: ActorDep, model: ModelQuery = None
) -> JSONResponse:
    """Store a delta file (`Content-Type: application/octet-stream`) as a new edit, `computed`, not applied.

    The edit is of `model`, or of the served model whose fingerprint the delta carries. The delta
    must carry that fingerprint (else 422 `fingerprint-mismatch`, naming both; with no live worker
    to compare with, 503 `model-unavailable` and nothing is stored). Its layers, method and query
    become the edit's; apply it with `POST /v1/edits/{id}/apply`.
    """
    media_type = request.headers.get("content-type", DELTA_MEDIA_TYPE).split(";")[0].strip().lower()
    if media_type != DELTA_MEDIA_TYPE:
        raise ProblemError(415, f"send the delta file as {DELTA_MEDIA_TYPE}, not {media_type or 'nothing'}")
    data = await request.body()
    try:
        out = await in_session(
            factory, lambda s: edit_out(import_delta(s, data, settings, model=model, actor=actor), [])
        )
    except InvalidDelta as exc:
        raise ProblemError(422, str(exc), slug="invalid-delta", title="Invalid delta") from exc
    except FingerprintMismatch as exc:
        raise ProblemError(
            422,
            str(exc),
            slug="fingerprint-mismatch",
            title="Delta for another base model",
            delta_fingerprint=exc.delta_fingerprint,
            model_fingerprint=exc.model_fingerprint,
        ) from exc
    headers = {"Location": edit_url(out.id)}
    return JSONResponse(out.model_dump(mode="json"), status_code=201, headers=headers)
