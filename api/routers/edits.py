"""``/v1/edits``: submit, list and read edits; apply/revert them; export their delta."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from api.auth import AuthorizedRoute
from api.deps import ActorDep, FactoryDep, IdempotencyDep, QueueDep, SessionDep, SettingsDep, model_limits
from api.errors import ProblemError
from api.http import in_session, parse_if_match, parse_prefer_wait, version_etag, wait_for_job
from api.plots import PLOT_RESPONSES, FormatPath, image, not_finished, not_plottable
from api.schemas import (
    EditAccepted,
    EditCreate,
    EditOut,
    EditPage,
    EditStatus,
    Link,
    StateChange,
    StateOut,
    edit_out,
    edit_url,
    model_query,
    problems,
)
from service.db.models import Edit
from service.plots import plot_edit
from service.usecases.edits import change_state, edit_histories, get_delta, get_edit, list_edits, submit_edit
from service.usecases.jobs import is_terminal

router = APIRouter(prefix="/v1/edits", tags=["edits"], route_class=AuthorizedRoute)

PreferHeader = Annotated[str | None, Header(description="`wait=N`: hold the request up to N seconds.")]
IfMatchHeader = Annotated[str | None, Header(description='The expected state version, e.g. `"3"`.')]
Action = Literal["apply", "revert"]


@router.post(
    "",
    status_code=202,
    response_model=EditAccepted,
    responses={200: {"model": EditOut, "description": "Finished within `Prefer: wait`."}}
    | problems(400, 413, 422, 429, 503),
)
async def create_edit(
    body: EditCreate,
    request: Request,
    factory: FactoryDep,
    queue: QueueDep,
    settings: SettingsDep,
    actor: ActorDep,
    idempotency_key: IdempotencyDep,
    prefer: PreferHeader = None,
) -> JSONResponse:
    """Patch a failing compositional query of a model: store a pending edit and queue its computation."""
    edit_request = body.model_dump(mode="json", exclude={"model"})
    edit, job = await in_session(
        factory,
        lambda s: submit_edit(
            s,
            queue,
            edit_request,
            limits=model_limits(request, s, body.model, ("body", "model")),
            idempotency_key=idempotency_key,
            actor=actor,
        ),
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    wait = parse_prefer_wait(prefer)
    if wait is not None:
        wait = min(wait, settings.max_wait_seconds)
        headers["Preference-Applied"] = f"wait={wait:g}"
        job = await wait_for_job(factory, job.id, wait)
        if is_terminal(job):
            done = await in_session(factory, lambda s: _with_history(s, get_edit(s, edit.id)))
            headers["Content-Location"] = edit_url(edit.id)
            return JSONResponse(done.model_dump(mode="json"), status_code=200, headers=headers)
    accepted = EditAccepted(
        id=edit.id, status=edit.status, url=edit_url(edit.id), job=Link(id=job.id, url=f"/v1/jobs/{job.id}")
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


@router.get("", response_model=EditPage, responses=problems(422, 503))
def list_edits_route(
    session: SessionDep,
    status: EditStatus | None = None,
    model: Annotated[str | None, model_query("Only the edits of this base model.")] = None,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> EditPage:
    """Edits newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    page = list_edits(session, status=status, base_model=model, cursor=cursor, limit=limit)
    histories = edit_histories(session, [e.id for e in page.items])
    return EditPage(items=[edit_out(e, histories[e.id]) for e in page.items], next_cursor=page.next_cursor)


@router.get("/{edit_id}", response_model=EditOut, responses=problems(404, 422, 503))
def read_edit(edit_id: str, session: SessionDep) -> EditOut:
    """One edit with its status, metrics, layers, delta norms and history (its applies and reverts)."""
    return _with_history(session, get_edit(session, edit_id))


def _with_history(session: Session, edit: Edit) -> EditOut:
    """The edit as the API shows it, with its applies and reverts."""
    return edit_out(edit, edit_histories(session, [edit.id])[edit.id])


def _state_change(
    edit_id: str,
    session: SessionDep,
    queue: QueueDep,
    actor: ActorDep,
    response: Response,
    idempotency_key: IdempotencyDep,
    if_match: IfMatchHeader = None,
) -> Callable[[Action], StateChange]:
    """What apply and revert take from the request; the two differ only in the action they pass.

    The state that changes is that of the edit's own model.
    """

    def change(action: Action) -> StateChange:
        expected = parse_if_match(if_match)
        edit, state = change_state(session, queue, edit_id, action, expected, actor, idempotency_key=idempotency_key)
        response.headers["ETag"] = version_etag(state.version)
        return StateChange(
            edit=_with_history(session, edit), state=StateOut(version=state.version, active_edits=state.active_edit_ids)
        )

    return change


StateChangeDep = Annotated[Callable[[Action], StateChange], Depends(_state_change)]


@router.post("/{edit_id}/apply", response_model=StateChange, responses=problems(404, 409, 412, 422, 503))
def apply_route(change: StateChangeDep) -> StateChange:
    """Add a computed (or reverted) edit to the desired model state; the workers follow."""
    return change("apply")


@router.post("/{edit_id}/revert", response_model=StateChange, responses=problems(404, 409, 412, 422, 503))
def revert_route(change: StateChangeDep) -> StateChange:
    """Remove an applied edit from the desired model state; the workers restore the exact weights."""
    return change("revert")


@router.get(
    "/{edit_id}/delta",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "safetensors"}}
    | problems(404, 422, 500, 503),
)
def download_delta(
    edit_id: str, session: SessionDep, if_none_match: Annotated[str | None, Header()] = None
) -> Response:
    """The edit's per-layer factors as a safetensors file (ETag: its sha256)."""
    delta = get_delta(session, edit_id)
    etag = f'"{delta.sha256}"'
    if hashlib.sha256(delta.data).hexdigest() != delta.sha256:
        raise ProblemError(500, f"the stored delta of edit {edit_id} does not match its sha256", slug="delta-corrupt")
    if if_none_match is not None and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(
        content=delta.data,
        media_type="application/octet-stream",
        headers={"ETag": etag, "Content-Disposition": f'attachment; filename="edit-{edit_id}.safetensors"'},
    )


@router.get("/{edit_id}/plot.{fmt}", response_class=Response, responses=PLOT_RESPONSES)
def plot_edit_route(edit_id: str, fmt: FormatPath, session: SessionDep) -> Response:
    """The edit's evaluation as a PNG or SVG figure.

    Greedy accuracy, win rate and mean p(answer) before and after the edit for each query set
    (correction, paraphrase, generalization, specificity), and ‖ΔW‖ per edited layer.
    """
    edit = get_edit(session, edit_id)
    if edit.status in ("pending", "computing"):
        raise not_finished(f"edit {edit.id}", edit.status, field="edit_status")
    metrics = edit.metrics
    if not isinstance(metrics, dict):
        detail = f"edit {edit.id} is {edit.status} and has no metrics to plot"
        raise not_plottable(detail, edit.status, field="edit_status")
    title = f"Edit {edit.id}: {edit.prompt!r} → {edit.answer!r}"
    return image(lambda: plot_edit(metrics, fmt, title=title), fmt, edit.status, field="edit_status")
