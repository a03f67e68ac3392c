"""Idempotency-Key: job-creating POSTs and apply/revert replay their first outcome; a reused key is 422.

A key belongs to the principal that sends it (an API key, or anonymous) and names one request.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from service.db import Edit, Job, ModelState, StateEvent
from service.jobs import InProcessQueue
from service.usecases.edits import change_state
from service.usecases.jobs import scoped_idempotency_key
from tests.api.support import BASE_MODEL, EDIT_BODY, compute_edit, snapshot
from tests.security.support import MakeKey, bearer
from tests.support import assert_problem

JOB_POSTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("/v1/edits", EDIT_BODY, {**EDIT_BODY, "answer": "Kyoto"}),
    ("/v1/analyses/logit-lens", {"prompt": "p", "targets": ["a"]}, {"prompt": "p", "targets": ["b"]}),
    ("/v1/score", {"prompt": "p", "answers": ["a"]}, {"prompt": "p", "answers": ["b"]}),
    ("/v1/generate", {"prompt": "p"}, {"prompt": "p", "max_new_tokens": 3}),
]


def _count(factory: sessionmaker[Session], model: Any) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.parametrize(("path", "body", "other"), JOB_POSTS, ids=[p for p, _, _ in JOB_POSTS])
def test_a_replay_returns_the_same_job_and_status(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    path: str,
    body: dict[str, Any],
    other: dict[str, Any],
) -> None:
    headers = {"Idempotency-Key": f"key-{path}"}
    first = client.post(path, json=body, headers=headers)
    again = client.post(path, json=body, headers=headers)
    assert first.status_code == again.status_code == 202, first.text
    assert first.json() == again.json()
    assert first.headers["location"] == again.headers["location"]
    assert _count(factory, Job) == 1 and queue.for_model(BASE_MODEL).depth() == 1
    before = snapshot(factory, queue)
    reused = client.post(path, json=other, headers=headers)
    assert_problem(reused, 422, "idempotency-key-reused")
    assert snapshot(factory, queue) == before


def test_a_key_is_bound_to_its_endpoint(client: TestClient, factory: sessionmaker[Session]) -> None:
    headers = {"Idempotency-Key": "shared"}
    assert client.post("/v1/edits", json=EDIT_BODY, headers=headers).status_code == 202
    reused = client.post("/v1/analyses/logit-lens", json={"prompt": "p"}, headers=headers)
    assert_problem(reused, 422, "idempotency-key-reused")
    assert _count(factory, Job) == 1


def test_without_a_key_each_post_is_new(client: TestClient, factory: sessionmaker[Session]) -> None:
    assert client.post("/v1/edits", json=EDIT_BODY).json() != client.post("/v1/edits", json=EDIT_BODY).json()
    assert _count(factory, Edit) == 2


def _computed(client: TestClient, factory: sessionmaker[Session]) -> str:
    edit_id: str = client.post("/v1/edits", json=EDIT_BODY).json()["id"]
    compute_edit(factory, edit_id)
    return edit_id


def _version(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        state = session.scalars(select(ModelState)).one()
        return state.version


@pytest.mark.parametrize("if_match", [None, '"0"'])
def test_apply_replays_without_a_second_version_bump(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, if_match: str | None
) -> None:
    edit_id = _computed(client, factory)
    headers = {"Idempotency-Key": "apply-1"} | ({"If-Match": if_match} if if_match else {})
    first = client.post(f"/v1/edits/{edit_id}/apply", headers=headers)
    assert first.status_code == 200, first.text
    before = snapshot(factory, queue)
    again = client.post(f"/v1/edits/{edit_id}/apply", headers=headers)
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.headers["etag"] == first.headers["etag"] == '"1"'
    assert snapshot(factory, queue) == before and _version(factory) == 1
    # without the key the same request is refused: the edit is already applied
    assert_problem(client.post(f"/v1/edits/{edit_id}/apply"), 409, "conflict")


def test_revert_replays_the_state_it_produced(client: TestClient, factory: sessionmaker[Session]) -> None:
    first_id, second_id = _computed(client, factory), _computed(client, factory)
    assert client.post(f"/v1/edits/{first_id}/apply").status_code == 200
    assert client.post(f"/v1/edits/{second_id}/apply").status_code == 200
    reverted = client.post(f"/v1/edits/{first_id}/revert", headers={"Idempotency-Key": "revert-1"})
    assert reverted.status_code == 200
    assert reverted.json()["state"] == {"version": 3, "active_edits": [second_id]}
    assert client.post(f"/v1/edits/{first_id}/apply").status_code == 200  # the state moves on: version 4
    again = client.post(f"/v1/edits/{first_id}/revert", headers={"Idempotency-Key": "revert-1"})
    assert again.status_code == 200
    assert again.json()["state"] == reverted.json()["state"]  # the state that request left, not the current one
    assert again.headers["etag"] == '"3"'
    assert _version(factory) == 4
    with factory() as session:
        assert session.get(Edit, first_id).status == "applied"  # type: ignore[union-attr]


def test_a_state_key_reused_for_another_request_is_422(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    first_id, second_id = _computed(client, factory), _computed(client, factory)
    assert client.post(f"/v1/edits/{first_id}/apply", headers={"Idempotency-Key": "k"}).status_code == 200
    before = snapshot(factory, queue)
    for path, headers in [
        (f"/v1/edits/{second_id}/apply", {"Idempotency-Key": "k"}),
        (f"/v1/edits/{first_id}/revert", {"Idempotency-Key": "k"}),
        (f"/v1/edits/{first_id}/apply", {"Idempotency-Key": "k", "If-Match": '"0"'}),
    ]:
        assert_problem(client.post(path, headers=headers), 422, "idempotency-key-reused")
    assert snapshot(factory, queue) == before


def test_a_failed_state_change_does_not_consume_its_key(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id = _computed(client, factory)
    headers = {"Idempotency-Key": "retry-me"}
    assert_problem(client.post(f"/v1/edits/{edit_id}/revert", headers=headers), 409)  # not applied yet
    assert client.post(f"/v1/edits/{edit_id}/apply").status_code == 200
    assert client.post(f"/v1/edits/{edit_id}/revert", headers=headers).status_code == 200
    with factory() as session:
        keys = session.scalars(select(StateEvent.idempotency_key).order_by(StateEvent.version)).all()
    assert keys == [None, scoped_idempotency_key("anonymous", "retry-me")]


def test_concurrent_twins_apply_once_and_both_get_the_outcome(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    edit_id = _computed(client, factory)
    barrier = threading.Barrier(4)

    def apply() -> tuple[str, int, list[str]]:
        with factory() as session:
            barrier.wait()
            edit, state = change_state(
                session, queue, edit_id, "apply", None, "t", base_model=BASE_MODEL, idempotency_key="twin"
            )
            return edit.status, state.version, list(state.active_edit_ids)

    with ThreadPoolExecutor(4) as pool:
        outcomes = [f.result() for f in [pool.submit(apply) for _ in range(4)]]
    assert outcomes == [("applied", 1, [edit_id])] * 4
    assert _version(factory) == 1 and _count(factory, StateEvent) == 1


def test_a_key_that_created_an_edit_does_not_apply_it(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    headers = {"Idempotency-Key": "one-request"}
    edit_id = client.post("/v1/edits", json=EDIT_BODY, headers=headers).json()["id"]
    compute_edit(factory, edit_id)
    before = snapshot(factory, queue)
    for action in ("apply", "revert"):
        problem = assert_problem(client.post(f"/v1/edits/{edit_id}/{action}", headers=headers), 422)
        assert problem["type"].endswith("/idempotency-key-reused") and "edit job" in problem["detail"]
    assert snapshot(factory, queue) == before  # nothing applied: no state event, no version
    assert client.post(f"/v1/edits/{edit_id}/apply").status_code == 200  # without the key it applies


@pytest.mark.parametrize(("path", "body", "other"), JOB_POSTS, ids=[p for p, _, _ in JOB_POSTS])
def test_a_key_that_applied_an_edit_creates_no_job(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    path: str,
    body: dict[str, Any],
    other: dict[str, Any],
) -> None:
    edit_id = _computed(client, factory)
    headers = {"Idempotency-Key": "one-request"}
    assert client.post(f"/v1/edits/{edit_id}/apply", headers=headers).status_code == 200
    before = snapshot(factory, queue)
    problem = assert_problem(client.post(path, json=body, headers=headers), 422, "idempotency-key-reused")
    assert f"apply of edit {edit_id}" in problem["detail"]
    assert snapshot(factory, queue) == before


def test_keys_are_scoped_to_the_api_key_that_sends_them(
    client: TestClient, factory: sessionmaker[Session], make_key: MakeKey
) -> None:
    alice, bob = make_key("edit", name="alice"), make_key("edit", name="bob")
    same = {"Idempotency-Key": "same"}
    first = client.post("/v1/edits", json=EDIT_BODY, headers=same | bearer(alice))
    other = client.post("/v1/edits", json={**EDIT_BODY, "answer": "Kyoto"}, headers=same | bearer(bob))
    assert first.status_code == other.status_code == 202, other.text  # bob's key is his own: no 422
    twin = client.post("/v1/edits", json=EDIT_BODY, headers=same | bearer(bob))
    assert_problem(twin, 422, "idempotency-key-reused")  # bob used it for another body, not alice's replay
    again = client.post("/v1/edits", json=EDIT_BODY, headers=same | bearer(alice))
    assert again.json()["id"] == first.json()["id"] != other.json()["id"]
    assert _count(factory, Edit) == 2

    for token, response in ((alice, first), (bob, other)):
        compute_edit(factory, response.json()["id"])
        applied = client.post(
            f"/v1/edits/{response.json()['id']}/apply", headers={"Idempotency-Key": "apply"} | bearer(token)
        )
        assert applied.status_code == 200, applied.text
    assert _version(factory) == 2 and _count(factory, StateEvent) == 2
