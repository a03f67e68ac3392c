"""Transitions of the desired model state: apply or revert an edit (a revert with an error fails it).

Each transition is one transaction on the caller's session: it commits on success and rolls back
before raising. The ``model_state`` row is changed only by a conditional update
(``... WHERE base_model = ? AND version = ?``), so of two concurrent transitions from the same
version exactly one wins; the other raises :class:`VersionMismatch` and may retry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypedDict, Unpack

from sqlalchemy import exists, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from service.db.models import Edit, ModelState, StateEvent, StoredDelta, utcnow

APPLICABLE_STATUSES = ("computed", "reverted")


class Request(TypedDict, total=False):
    """Who asks for a transition and how: the optional arguments of :func:`apply_edit` and :func:`revert_edit`."""

    expected_version: int | None
    actor: str | None
    idempotency_key: str | None
    request_hash: str | None


class StateError(Exception):
    """Base class of model-state errors."""


class NotFound(StateError, LookupError):
    """The edit does not exist."""


class StateConflict(StateError):
    """The edit is not in a status (or base model) that allows the transition."""


class VersionMismatch(StateError):
    """The model state is not at the expected version; ``current`` is the version now."""

    def __init__(self, current: int, expected: int | None = None) -> None:
        self.current = current
        self.expected = expected
        detail = f"expected version {expected}, " if expected is not None else ""
        super().__init__(f"model state changed concurrently: {detail}current version is {current}")


def _insert_ignore(session: Session, base_model: str) -> None:
    """Insert the version-0 row for ``base_model`` unless it exists (race-safe)."""
    values = {"base_model": base_model, "version": 0, "active_edit_ids": [], "updated_at": utcnow()}
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(pg_insert(ModelState).values(values).on_conflict_do_nothing())
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(sqlite_insert(ModelState).values(values).on_conflict_do_nothing())
    else:  # pragma: no cover - only Postgres and SQLite are supported
        try:
            with session.begin_nested():
                session.execute(insert(ModelState).values(values))
        except IntegrityError:
            pass


def _read_state(session: Session, base_model: str) -> ModelState | None:
    stmt = select(ModelState).where(ModelState.base_model == base_model)
    return session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()


def _load_state(session: Session, base_model: str) -> ModelState:
    state = _read_state(session, base_model)
    if state is None:
        _insert_ignore(session, base_model)
        state = _read_state(session, base_model)
        if state is None:  # pragma: no cover - the row was just inserted or already there
            raise StateError(f"could not create the model state of {base_model!r}")
    return state


def get_state(session: Session, base_model: str) -> ModelState:
    """The model state of ``base_model``, creating its version-0 row (and committing) if absent."""
    state = _read_state(session, base_model)
    if state is not None:
        return state
    try:
        state = _load_state(session, base_model)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return state


def _transition(
    session: Session,
    base_model: str,
    edit_id: str,
    *,
    action: str,
    allowed: Sequence[str],
    new_status: str,
    new_active: Callable[[list[str]], list[str]],
    error: dict[str, Any] | None = None,
    **request: Unpack[Request],
) -> ModelState:
    expected_version = request.get("expected_version")
    try:
        edit = session.get(Edit, edit_id, populate_existing=True)
        if edit is None:
            raise NotFound(f"edit {edit_id} not found")
        if edit.base_model != base_model:
            raise StateConflict(f"edit {edit_id} belongs to base model {edit.base_model!r}, not {base_model!r}")
        if edit.status not in allowed:
            if action == "apply":
                msg = f"edit {edit_id} cannot be applied (status {edit.status})"
            else:
                msg = f"edit {edit_id} is not applied (status {edit.status})"
            raise StateConflict(msg)
        if action == "apply":
            has_delta = session.scalar(select(exists().where(StoredDelta.edit_id == edit_id)))
            if not has_delta:
                raise StateConflict(f"edit {edit_id} has no stored delta")

        state = _load_state(session, base_model)
        read_version = state.version
        if expected_version is not None and expected_version != read_version:
            raise VersionMismatch(read_version, expected_version)
        active = new_active(list(state.active_edit_ids))
        now = utcnow()
        _bump_version(session, base_model, read_version, active, now, expected_version)
        _set_edit_status(session, edit_id, edit.status, new_status, action, now, error)
        session.add(
            StateEvent(
                base_model=base_model,
                version=read_version + 1,
                action=action,
                edit_id=edit_id,
                actor=request.get("actor"),
                created_at=now,
                idempotency_key=request.get("idempotency_key"),
                request_hash=request.get("request_hash"),
            )
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    # Show the outcome of this transition on the loaded objects without another round trip.
    for attr, value in (("version", read_version + 1), ("active_edit_ids", active), ("updated_at", now)):
        set_committed_value(state, attr, value)
    for attr, value in _edit_values(new_status, action, now, error).items():
        set_committed_value(edit, attr, value)
    return state


def _bump_version(
    session: Session,
    base_model: str,
    read_version: int,
    active: list[str],
    now: datetime,
    expected_version: int | None,
) -> None:
    """Move the state from ``read_version`` to the next one, or raise if someone else did first.

    The conditional update (``WHERE version = read_version``) every transition of the row goes through:
    of two concurrent bumps from the same version exactly one wins. Nothing is committed here.
    """
    result = session.execute(
        update(ModelState)
        .where(ModelState.base_model == base_model, ModelState.version == read_version)
        .values(version=ModelState.version + 1, active_edit_ids=active, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        current = _read_state(session, base_model)
        raise VersionMismatch(current.version if current else 0, expected_version)


def _edit_values(new_status: str, action: str, now: datetime, error: dict[str, Any] | None) -> dict[str, Any]:
    """The columns of the edit a transition sets: its status, the time stamps and (when it fails) the error."""
    stamp = "applied_at" if action == "apply" else "reverted_at"
    values: dict[str, Any] = {"status": new_status, "updated_at": now, stamp: now}
    if error is not None:
        values["error"] = error
    return values


def _set_edit_status(
    session: Session,
    edit_id: str,
    old_status: str,
    new_status: str,
    action: str,
    now: datetime,
    error: dict[str, Any] | None,
) -> None:
    """Change the edit's status only if it is still ``old_status`` (a second guard)."""
    result = session.execute(
        update(Edit)
        .where(Edit.id == edit_id, Edit.status == old_status)
        .values(**_edit_values(new_status, action, now, error))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise StateConflict(f"edit {edit_id} changed status concurrently")


def apply_edit(session: Session, base_model: str, edit_id: str, **request: Unpack[Request]) -> ModelState:
    """Append a computed or reverted edit to the active list and bump the version (one transaction).

    Raises :class:`NotFound`, :class:`StateConflict` (wrong status, other base model, no delta) or
    :class:`VersionMismatch` (``expected_version`` is stale, or the state moved concurrently). The
    event records ``idempotency_key`` (unique: a reused key raises ``IntegrityError``) and ``request_hash``.
    """

    def add(active: list[str]) -> list[str]:
        return [*(e for e in active if e != edit_id), edit_id]

    rule = {"action": "apply", "allowed": APPLICABLE_STATUSES, "new_status": "applied", "new_active": add}
    return _transition(session, base_model, edit_id, **rule, **request)


def revert_edit(
    session: Session, base_model: str, edit_id: str, *, error: dict[str, Any] | None = None, **request: Unpack[Request]
) -> ModelState:
    """Remove an applied edit from the active list and bump the version (one transaction).

    The edit becomes ``reverted``, or with ``error`` ``failed`` with that problem (a worker
    withdrawing a bad delta). Raises :class:`NotFound`, :class:`StateConflict` (not applied, other
    base model) or :class:`VersionMismatch` (``expected_version`` is stale, or the state moved concurrently).
    """

    def remove(active: list[str]) -> list[str]:
        return [e for e in active if e != edit_id]

    status = "reverted" if error is None else "failed"
    rule = {"action": "revert", "allowed": ("applied",), "new_status": status, "new_active": remove}
    return _transition(session, base_model, edit_id, error=error, **rule, **request)
