"""Model-state transitions: versions, events, status rules, optimistic concurrency."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import (
    Edit,
    ModelState,
    NotFound,
    StateConflict,
    StateEvent,
    VersionMismatch,
    apply_edit,
    get_state,
    revert_edit,
)
from service.db import state as state_module
from tests.db.helpers import BASE_MODEL, add_edit


def _events(session: Session) -> list[StateEvent]:
    return list(session.scalars(select(StateEvent).order_by(StateEvent.id)))


def _fresh_state(factory: sessionmaker[Session]) -> ModelState:
    with factory() as s:
        return get_state(s, BASE_MODEL)


def test_get_state_creates_version_zero_once(session: Session) -> None:
    first = get_state(session, BASE_MODEL)
    assert (first.version, first.active_edit_ids) == (0, [])
    again = get_state(session, BASE_MODEL)
    assert again.version == 0
    other = get_state(session, "other-model")
    assert other.base_model == "other-model"
    assert session.scalar(select(func.count()).select_from(ModelState)) == 2


def test_apply_and_revert_bump_versions_and_log_events(session: Session, factory: sessionmaker[Session]) -> None:
    a, b, c = (add_edit(session) for _ in range(3))
    assert apply_edit(session, BASE_MODEL, a, expected_version=0, actor="alice").version == 1
    assert apply_edit(session, BASE_MODEL, b, actor="bob").version == 2
    state = apply_edit(session, BASE_MODEL, c, expected_version=2)
    assert (state.version, state.active_edit_ids) == (3, [a, b, c])

    state = revert_edit(session, BASE_MODEL, b, expected_version=3, actor="carol")
    assert (state.version, state.active_edit_ids) == (4, [a, c])

    # Re-applying a reverted edit puts it last.
    state = apply_edit(session, BASE_MODEL, b, expected_version=4)
    assert (state.version, state.active_edit_ids) == (5, [a, c, b])

    with factory() as other:
        stored = get_state(other, BASE_MODEL)
        assert (stored.version, stored.active_edit_ids) == (5, [a, c, b])
        edit_b = other.get(Edit, b)
        assert edit_b is not None and edit_b.status == "applied"
        assert edit_b.applied_at is not None and edit_b.reverted_at is not None
        assert edit_b.applied_at >= edit_b.reverted_at
        events = [(e.version, e.action, e.edit_id, e.actor) for e in _events(other)]
    assert events == [
        (1, "apply", a, "alice"),
        (2, "apply", b, "bob"),
        (3, "apply", c, None),
        (4, "revert", b, "carol"),
        (5, "apply", b, None),
    ]


def test_returned_objects_reflect_the_transition(session: Session) -> None:
    edit_id = add_edit(session)
    edit = session.get(Edit, edit_id)
    assert edit is not None
    apply_edit(session, BASE_MODEL, edit_id)
    assert edit.status == "applied" and edit.applied_at is not None
    revert_edit(session, BASE_MODEL, edit_id)
    assert edit.status == "reverted" and edit.reverted_at is not None


@pytest.mark.parametrize("status", ["pending", "computing", "failed"])
def test_apply_rejects_edits_not_computed(session: Session, status: str) -> None:
    edit_id = add_edit(session, status=status)
    with pytest.raises(StateConflict, match=f"cannot be applied \\(status {status}\\)"):
        apply_edit(session, BASE_MODEL, edit_id)
    assert get_state(session, BASE_MODEL).version == 0
    assert _events(session) == []


def test_apply_rejects_an_applied_edit(session: Session) -> None:
    edit_id = add_edit(session)
    apply_edit(session, BASE_MODEL, edit_id)
    with pytest.raises(StateConflict, match="status applied"):
        apply_edit(session, BASE_MODEL, edit_id)
    assert get_state(session, BASE_MODEL).version == 1


def test_revert_rejects_an_edit_that_is_not_applied(session: Session) -> None:
    edit_id = add_edit(session)
    with pytest.raises(StateConflict, match=f"edit {edit_id} is not applied \\(status computed\\)"):
        revert_edit(session, BASE_MODEL, edit_id)
    apply_edit(session, BASE_MODEL, edit_id)
    revert_edit(session, BASE_MODEL, edit_id)
    with pytest.raises(StateConflict, match=f"edit {edit_id} is not applied \\(status reverted\\)"):
        revert_edit(session, BASE_MODEL, edit_id)
    assert get_state(session, BASE_MODEL).version == 2
    assert len(_events(session)) == 2


def test_unknown_edit_other_model_and_missing_delta(session: Session) -> None:
    with pytest.raises(NotFound):
        apply_edit(session, BASE_MODEL, "00000000-0000-0000-0000-000000000000")
    foreign = add_edit(session, base_model="another-model")
    with pytest.raises(StateConflict, match="belongs to base model 'another-model'"):
        apply_edit(session, BASE_MODEL, foreign)
    bare = add_edit(session, with_delta=False)
    with pytest.raises(StateConflict, match="no stored delta"):
        apply_edit(session, BASE_MODEL, bare)
    assert get_state(session, BASE_MODEL).version == 0


def test_stale_expected_version_is_rejected(session: Session) -> None:
    a, b = add_edit(session), add_edit(session)
    apply_edit(session, BASE_MODEL, a, expected_version=0)
    with pytest.raises(VersionMismatch) as info:
        apply_edit(session, BASE_MODEL, b, expected_version=0)
    assert info.value.current == 1 and info.value.expected == 0
    with pytest.raises(VersionMismatch):
        revert_edit(session, BASE_MODEL, a, expected_version=5)
    state = get_state(session, BASE_MODEL)
    assert (state.version, state.active_edit_ids) == (1, [a])
    assert session.get(Edit, b).status == "computed"  # type: ignore[union-attr]
    assert len(_events(session)) == 1


def test_concurrent_change_between_read_and_update_loses(
    session: Session, factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even without expected_version the update is conditional on the version that was read."""
    a, b = add_edit(session), add_edit(session)
    get_state(session, BASE_MODEL)
    original: Callable[[Session, str], ModelState] = state_module._load_state

    def read_then_someone_else_applies(s: Session, base_model: str) -> ModelState:
        stale = original(s, base_model)
        monkeypatch.setattr(state_module, "_load_state", original)
        with factory() as rival:
            apply_edit(rival, BASE_MODEL, b)
        return stale

    monkeypatch.setattr(state_module, "_load_state", read_then_someone_else_applies)
    with pytest.raises(VersionMismatch) as info:
        apply_edit(session, BASE_MODEL, a)
    assert info.value.current == 1
    state = _fresh_state(factory)
    assert (state.version, state.active_edit_ids) == (1, [b])
    assert session.get(Edit, a, populate_existing=True).status == "computed"  # type: ignore[union-attr]
    assert [e.edit_id for e in _events(session)] == [b]


def test_racing_from_the_same_version_has_one_winner(session: Session, factory: sessionmaker[Session]) -> None:
    threads = 8
    edit_ids = [add_edit(session) for _ in range(threads)]
    get_state(session, BASE_MODEL)
    barrier = threading.Barrier(threads)
    outcomes: list[str] = []
    lock = threading.Lock()

    def race(edit_id: str) -> None:
        with factory() as s:
            barrier.wait()
            try:
                apply_edit(s, BASE_MODEL, edit_id, expected_version=0)
                outcome = "won"
            except VersionMismatch as exc:
                outcome = f"lost@{exc.current}"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=race, args=(e,)) for e in edit_ids]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert sorted(outcomes) == ["lost@1"] * (threads - 1) + ["won"]
    state = _fresh_state(factory)
    assert state.version == 1 and len(state.active_edit_ids) == 1
    assert len(_events(session)) == 1


def test_concurrent_apply_and_revert_have_one_winner_per_version(
    session: Session, factory: sessionmaker[Session]
) -> None:
    threads, rounds = 8, 15
    edit_ids = [add_edit(session) for _ in range(4)]
    get_state(session, BASE_MODEL)
    barrier = threading.Barrier(threads)
    wins: list[tuple[int, str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        with factory() as s:
            barrier.wait()
            for _ in range(rounds):
                edit_id = rng.choice(edit_ids)
                try:
                    current = get_state(s, BASE_MODEL)
                    version = current.version
                    if edit_id in current.active_edit_ids:
                        state = revert_edit(s, BASE_MODEL, edit_id, expected_version=version)
                        action = "revert"
                    else:
                        state = apply_edit(s, BASE_MODEL, edit_id, expected_version=version)
                        action = "apply"
                except (VersionMismatch, StateConflict):
                    continue
                except BaseException as exc:  # surfaced below
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    wins.append((state.version, action, edit_id))

    workers = [threading.Thread(target=churn, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert errors == []
    assert wins, "no transition succeeded"

    versions = sorted(v for v, _, _ in wins)
    assert versions == list(range(1, len(wins) + 1)), "exactly one winner per version"

    with factory() as s:
        state = get_state(s, BASE_MODEL)
        assert state.version == len(wins)
        events = _events(s)
        assert [(e.version, e.action, e.edit_id) for e in events] == sorted(wins)
        replayed: list[str] = []
        for e in events:
            replayed = [x for x in replayed if x != e.edit_id]
            if e.action == "apply":
                replayed.append(e.edit_id)
        assert state.active_edit_ids == replayed
        for edit in s.scalars(select(Edit)):
            assert (edit.status == "applied") == (edit.id in state.active_edit_ids)
