"""Stateful fuzzing of the desired model state in the database (service.db.state apply/revert).

The same rules as the weight-state machine: after every step ``model_state.active_edit_ids`` is
the model's list, each successful transition bumps the version by exactly one (and logs one
event), and invalid transitions raise (StateConflict, NotFound, VersionMismatch) and change no row.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import Base, Edit, ModelState, StateEvent, StoredDelta
from service.db.state import NotFound, StateConflict, VersionMismatch, apply_edit, revert_edit
from tests.fuzz.stateful import EDIT_IDS, N_EDITS, STATEFUL_SETTINGS, ActiveListMachine

BASE_MODEL = "test-model"
PENDING, OTHER_MODEL, MISSING = "edit-pending", "edit-other-model", "edit-missing"
DELTA = b"delta-bytes"


def _add_edit(session: Session, edit_id: str, *, status: str, base_model: str = BASE_MODEL) -> None:
    text = f"query {edit_id}"
    session.add(
        Edit(
            id=edit_id,
            status=status,
            prompt=text,
            hop1_phrase=text,
            bridge="b",
            answer="a",
            request={},
            layers=[1, 2],
            base_model=base_model,
            base_fingerprint="f" * 64,
        )
    )
    if status == "computed":
        session.flush()
        sha = hashlib.sha256(DELTA).hexdigest()
        session.add(StoredDelta(edit_id=edit_id, data=DELTA, sha256=sha, shapes={"layer.1": [4, 4]}))


def _reset(factory: sessionmaker[Session]) -> None:
    """Empty every table, then four computed edits, a pending one and one of another base model."""
    with factory() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(delete(table))
        for edit_id in EDIT_IDS:
            _add_edit(session, edit_id, status="computed")
        _add_edit(session, PENDING, status="pending")
        _add_edit(session, OTHER_MODEL, status="computed", base_model="other-model")
        session.commit()


def _rows(factory: sessionmaker[Session]) -> dict[str, list[tuple[Any, ...]]]:
    with factory() as session:
        return {
            table.name: sorted((tuple(row) for row in session.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables
        }


def _state(factory: sessionmaker[Session]) -> ModelState | None:
    with factory() as session:
        return session.scalars(select(ModelState).where(ModelState.base_model == BASE_MODEL)).one_or_none()


def _statuses(factory: sessionmaker[Session]) -> dict[str, str]:
    with factory() as session:
        return dict(session.execute(select(Edit.id, Edit.status)).tuples().all())


def db_state_machine(factory: sessionmaker[Session]) -> type[ActiveListMachine]:
    class DbStateMachine(ActiveListMachine):
        def __init__(self) -> None:
            super().__init__()
            _reset(factory)
            self.version = 0
            self.ever_applied: set[str] = set()

        def _transition(self, action: str, edit_id: str, expected_version: int | None = None) -> None:
            """One transition that must succeed: the new state is returned and is one version on."""
            fn = apply_edit if action == "apply" else revert_edit
            with factory() as session:
                state = fn(session, BASE_MODEL, edit_id, expected_version=expected_version, actor="fuzz")
            if action == "apply":
                self.active.append(edit_id)
                self.ever_applied.add(edit_id)
            else:
                self.active.remove(edit_id)
            self.version += 1
            assert (state.version, list(state.active_edit_ids)) == (self.version, self.active)

        def _refused(self, error: type[Exception], action: str, edit_id: str, **kwargs: Any) -> None:
            """A transition that must raise ``error`` and leave every row as it was."""
            fn = apply_edit if action == "apply" else revert_edit
            before = _rows(factory)
            with factory() as session, pytest.raises(error):
                fn(session, BASE_MODEL, edit_id, actor="fuzz", **kwargs)
            assert _rows(factory) == before

        def do_apply(self, edit_id: str) -> None:
            if edit_id in self.active:
                self._refused(StateConflict, "apply", edit_id)
            else:
                self._transition("apply", edit_id)

        def do_revert(self, edit_id: str) -> None:
            if edit_id in self.active:
                self._transition("revert", edit_id)
            else:
                self._refused(StateConflict, "revert", edit_id)

        def do_set_active(self, edit_ids: list[str]) -> None:
            """Reach ``edit_ids`` by transitions: keep the common prefix, revert the rest, apply the new."""
            keep = 0
            while keep < min(len(self.active), len(edit_ids)) and self.active[keep] == edit_ids[keep]:
                keep += 1
            for edit_id in reversed(self.active[keep:]):
                self._transition("revert", edit_id)
            for edit_id in edit_ids[keep:]:
                self._transition("apply", edit_id)
            assert self.active == edit_ids

        @rule(edit_id=st.sampled_from([PENDING, OTHER_MODEL, MISSING]), action=st.sampled_from(["apply", "revert"]))
        def transition_an_edit_that_cannot_move(self, edit_id: str, action: str) -> None:
            self._refused(NotFound if edit_id == MISSING else StateConflict, action, edit_id)

        @rule(i=st.integers(0, N_EDITS - 1), offset=st.sampled_from([-2, -1, 0, 1]))
        def transition_at_a_version(self, i: int, offset: int) -> None:
            """``expected_version``: the current one is honoured, any other is a VersionMismatch."""
            edit_id = EDIT_IDS[i]
            action = "revert" if edit_id in self.active else "apply"
            if offset == 0:
                self._transition(action, edit_id, expected_version=self.version)
            else:
                self._refused(VersionMismatch, action, edit_id, expected_version=self.version + offset)

        def _expected_status(self, edit_id: str) -> str:
            if edit_id in self.active:
                return "applied"
            return "reverted" if edit_id in self.ever_applied else "computed"

        @invariant()
        def database_matches_the_model(self) -> None:
            state = _state(factory)
            if state is None:  # no transition has succeeded yet
                assert self.version == 0
            else:
                assert (state.version, list(state.active_edit_ids)) == (self.version, self.active)
            with factory() as session:
                versions = list(session.scalars(select(StateEvent.version).order_by(StateEvent.version)))
            assert versions == list(range(1, self.version + 1))
            statuses = _statuses(factory)
            assert {i: statuses[i] for i in EDIT_IDS} == {i: self._expected_status(i) for i in EDIT_IDS}
            assert (statuses[PENDING], statuses[OTHER_MODEL]) == ("pending", "computed")

        def check_pristine(self) -> None:
            state = _state(factory)
            assert state is None or list(state.active_edit_ids) == []
            assert "applied" not in _statuses(factory).values()

    return DbStateMachine


def test_db_state_apply_revert_sequences(factory: sessionmaker[Session]) -> None:
    run_state_machine_as_test(db_state_machine(factory), settings=STATEFUL_SETTINGS)
