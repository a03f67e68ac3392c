"""Edit use-cases: submit, read, list, the one path that changes the desired model state, and the stored delta."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.db.models import EDIT_STATUSES, Edit, Job, ModelState, StateEvent, StoredDelta, new_uuid
from service.db.state import NotFound, StateConflict, VersionMismatch, apply_edit, revert_edit
from service.jobs.payloads import EditPayload
from service.jobs.queue import JobQueue, QueueUnavailable
from service.usecases.errors import (
    ConflictError,
    InvalidRequest,
    NotFoundError,
    PreconditionFailed,
)
from service.usecases.jobs import (
    check_capacity,
    enqueue_after_commit,
    find_idempotent,
    idempotency_reused,
    idempotent_use,
    new_job,
    request_hash,
)
from service.usecases.pagination import Page, paginate
from service.usecases.validation import Limits, validate_edit_request

log = logging.getLogger(__name__)

STATE_NUDGE = "state"
STATE_RETRIES = 5  # tries of a change without If-Match while concurrent changes win the race
STATE_RETRY_SECONDS = 0.05  # the pause before the next try grows by this much each time


def submit_edit(
    session: Session,
    queue: JobQueue,
    request: Mapping[str, Any],
    *,
    limits: Limits | None = None,
    idempotency_key: str | None = None,
    actor: str | None = None,
) -> tuple[Edit, Job]:
    """Validate ``request``, commit a pending edit of the limits' model and its ``edit`` job together, then
    enqueue the job on that model's queue.

    A replay with the same ``idempotency_key`` and request returns the first edit and job.
    Raises :class:`InvalidRequest`, :class:`QueueFull` or :class:`IdempotencyConflict` before writing.
    """
    limits = limits or Limits()
    data = validate_edit_request(request, limits)
    base_model = limits.model
    req_hash = request_hash("edit", {"base_model": base_model, **data})
    if idempotency_key and (replay := _replay(session, idempotency_key, req_hash)):
        return replay
    check_capacity(session, limits)
    edit_id = new_uuid()
    job = new_job("edit", EditPayload(edit_id=edit_id).model_dump(), limits, idempotency_key, req_hash)
    edit = edit_row(
        data, status="pending", base_model=base_model, base_fingerprint="", actor=actor, at=job.created_at,
        id=edit_id, job_id=job.id,
    )  # fmt: skip
    session.add_all([job, edit])
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        if idempotency_key and (replay := _replay(session, idempotency_key, req_hash)):
            return replay
        raise
    enqueue_after_commit(queue, job)
    return edit, job


def edit_row(
    request: Mapping[str, Any], *, status: str, base_model: str, base_fingerprint: str, actor: str | None,
    at: datetime, **fields: Any,
) -> Edit:  # fmt: skip
    """A new edit row carrying ``request``'s query, band, method and apply policy (``request`` is stored too)."""
    return Edit(
        status=status,
        prompt=request["prompt"],
        hop1_phrase=request["hop1_phrase"],
        bridge=request["bridge"],
        answer=request["answer"],
        request=dict(request),
        layers=request["layers"] or [],
        method=request["method"],
        apply_policy=request["apply"],
        base_model=base_model,
        base_fingerprint=base_fingerprint,
        actor=actor,
        created_at=at,
        updated_at=at,
        **fields,
    )


def _replay(session: Session, key: str, req_hash: str) -> tuple[Edit, Job] | None:
    job = find_idempotent(session, key, "edit", req_hash)
    if job is None:
        return None
    edit = session.scalars(select(Edit).where(Edit.job_id == job.id)).one()
    return edit, job


def get_edit(session: Session, edit_id: str) -> Edit:
    """The edit ``edit_id`` fresh from the database, or :class:`NotFoundError`."""
    edit = session.get(Edit, edit_id, populate_existing=True) if "\x00" not in edit_id else None  # no NUL in ids
    if edit is None:
        raise NotFoundError(f"edit {edit_id} not found")
    return edit


def edit_histories(session: Session, edit_ids: Sequence[str]) -> dict[str, list[StateEvent]]:
    """The apply/revert events of each edit in ``edit_ids``, oldest first (one query)."""
    histories: dict[str, list[StateEvent]] = {edit_id: [] for edit_id in edit_ids}
    if histories:
        events = session.scalars(
            select(StateEvent).where(StateEvent.edit_id.in_(histories)).order_by(StateEvent.version, StateEvent.id)
        )
        for event in events:
            histories[event.edit_id].append(event)
    return histories


def list_edits(
    session: Session,
    *,
    status: str | None = None,
    base_model: str | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> Page[Edit]:
    """Edits newest first, optionally only those with ``status`` (or of ``base_model``)."""
    if status is not None and status not in EDIT_STATUSES:
        msg = f"must be one of {list(EDIT_STATUSES)}"
        raise InvalidRequest([{"loc": ["query", "status"], "msg": msg, "type": "enum"}])
    stmt = select(Edit)
    if status is not None:
        stmt = stmt.where(Edit.status == status)
    if base_model is not None:
        stmt = stmt.where(Edit.base_model == base_model)
    return paginate(session, stmt, Edit, cursor, limit)


def change_state(
    session: Session,
    queue: JobQueue | None,
    edit_id: str,
    action: Literal["apply", "revert"],
    expected_version: int | None,
    actor: str | None,
    *,
    base_model: str | None = None,
    idempotency_key: str | None = None,
    error: dict[str, Any] | None = None,
) -> tuple[Edit, ModelState]:
    """The one way the desired state of a model changes: apply or revert an edit, then nudge the workers.

    The model is the edit's own; a worker names the model it serves as ``base_model``, and an edit
    of another model is then a :class:`ConflictError`.

    The API's apply/revert, a worker applying the edit it computed and a worker withdrawing an edit
    whose delta is bad (a revert with ``error``: the edit becomes ``failed`` with that problem) all
    come here. With ``expected_version`` the change happens only from that version (else
    :class:`PreconditionFailed`); without it, a concurrent change is retried up to
    ``STATE_RETRIES`` times. Raises :class:`NotFoundError`, or :class:`ConflictError` when the
    edit's status does not allow it. A replay with the same ``idempotency_key`` and request changes
    nothing and returns the edit (as it is now) and the state as the first request left it; a
    different request raises :class:`IdempotencyConflict`. ``queue`` None: no worker to nudge.
    """
    if "\x00" in edit_id:  # no id holds NUL (Postgres text cannot)
        raise NotFoundError(f"edit {edit_id} not found")
    if error is not None and action != "revert":
        raise ValueError("only a revert fails an edit")
    if base_model is None:
        base_model = get_edit(session, edit_id).base_model
    key = idempotency_key or None
    req_hash = None
    if key is not None:
        req_hash = request_hash(action, {"base_model": base_model, "edit_id": edit_id, "if_match": expected_version})
        if replay := _state_replay(session, key, req_hash):
            return replay
    transition = apply_edit if action == "apply" else partial(revert_edit, error=error)
    for attempt in range(1, STATE_RETRIES + 1):
        try:
            state = transition(
                session,
                base_model,
                edit_id,
                expected_version=expected_version,
                actor=actor,
                idempotency_key=key,
                request_hash=req_hash,
            )
            break
        except NotFound as exc:
            raise NotFoundError(str(exc)) from None
        except (StateConflict, VersionMismatch, IntegrityError) as exc:
            # A concurrent request with the same key may have won: answer with its outcome.
            if key is not None and req_hash is not None and (replay := _state_replay(session, key, req_hash)):
                return replay
            if isinstance(exc, IntegrityError):
                raise
            if isinstance(exc, StateConflict):
                raise ConflictError(str(exc)) from None
            if expected_version is not None:
                raise PreconditionFailed(exc.current, expected_version) from None
            if attempt == STATE_RETRIES:
                raise ConflictError(f"the model state kept changing concurrently: {exc}") from None
            time.sleep(STATE_RETRY_SECONDS * attempt)
    if queue is not None:
        try:
            queue.publish_nudge(STATE_NUDGE)
        except QueueUnavailable as exc:
            log.warning("state changed to version %s but the nudge failed (workers poll): %s", state.version, exc)
    return get_edit(session, edit_id), state


def _state_replay(session: Session, key: str, req_hash: str) -> tuple[Edit, ModelState] | None:
    """The outcome of the earlier apply/revert made with ``key``, or None; a key used for another request raises."""
    event = idempotent_use(session, key)
    if event is None:
        return None
    if not isinstance(event, StateEvent) or event.request_hash != req_hash:
        raise idempotency_reused(event)
    return get_edit(session, event.edit_id), state_at(session, event.base_model, event.version)


def state_at(session: Session, base_model: str, version: int) -> ModelState:
    """The desired state of ``base_model`` as of ``version``, rebuilt from the event log (not stored)."""
    events = session.scalars(
        select(StateEvent)
        .where(StateEvent.base_model == base_model, StateEvent.version <= version)
        .order_by(StateEvent.version, StateEvent.id)
    )
    active: list[str] = []
    for event in events:
        active = [e for e in active if e != event.edit_id]
        if event.action == "apply":
            active.append(event.edit_id)
    return ModelState(base_model=base_model, version=version, active_edit_ids=active)


def get_delta(session: Session, edit_id: str) -> StoredDelta:
    """The stored delta of an edit; :class:`NotFoundError` if the edit or its delta does not exist."""
    edit = get_edit(session, edit_id)
    delta = session.get(StoredDelta, edit_id)
    if delta is None:
        raise NotFoundError(f"edit {edit_id} has no delta (status {edit.status})")
    return delta
