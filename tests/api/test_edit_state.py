"""Listing edits with cursors, apply/revert with If-Match, and the delta download."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.db import StateEvent, StoredDelta
from service.jobs import InProcessQueue
from tests.api.support import DELTA_BYTES, EDIT_BODY, compute_edit, snapshot
from tests.support import assert_problem


def _submit(client: TestClient, n: int = 1) -> list[str]:
    ids = []
    for i in range(n):
        response = client.post("/v1/edits", json={**EDIT_BODY, "answer": f"Tokyo {i}"})
        assert response.status_code == 202
        ids.append(response.json()["id"])
    return ids


def _computed(client: TestClient, factory: sessionmaker[Session]) -> str:
    (edit_id,) = _submit(client)
    compute_edit(factory, edit_id)
    return edit_id


def test_pagination_walks_every_edit_once_newest_first(client: TestClient, factory: sessionmaker[Session]) -> None:
    ids = _submit(client, 7)
    compute_edit(factory, ids[2])
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/edits", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == ids[::-1]
    computed = client.get("/v1/edits", params={"status": "computed"}).json()
    assert [e["id"] for e in computed["items"]] == [ids[2]] and computed["next_cursor"] is None
    assert computed["items"][0]["delta_norms"] == {"4": 0.5, "5": 0.25}
    assert len(client.get("/v1/edits").json()["items"]) == 7  # default limit 20


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 101}, {"status": "done"}, {"cursor": "not-a-cursor"}, {"cursor": "e30"}],
    ids=["limit0", "limit101", "bad-status", "garbage-cursor", "json-cursor"],
)
def test_bad_list_parameters_are_422(client: TestClient, params: dict[str, object]) -> None:
    problem = assert_problem(client.get("/v1/edits", params=params), 422, "validation")
    assert next(iter(params)) in problem["detail"]


def test_unknown_edit_is_404(client: TestClient) -> None:
    for path in ("/v1/edits/nope", "/v1/edits/nope/delta"):
        assert_problem(client.get(path), 404, "not-found")
    for action in ("apply", "revert"):
        assert_problem(client.post(f"/v1/edits/nope/{action}"), 404, "not-found")


@pytest.mark.parametrize("if_match", ['"0"', "0", 'W/"0"', "*", None])
def test_apply_with_if_match_then_revert(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, if_match: str | None
) -> None:
    edit_id = _computed(client, factory)
    nudges = queue.nudges("test")
    headers = {"If-Match": if_match} if if_match is not None else {}
    applied = client.post(f"/v1/edits/{edit_id}/apply", headers=headers)
    assert applied.status_code == 200, applied.text
    assert applied.headers["etag"] == '"1"'
    body = applied.json()
    assert body["state"] == {"version": 1, "active_edits": [edit_id]}
    assert body["edit"]["status"] == "applied" and body["edit"]["applied_at"]
    assert nudges.get(timeout=1) == "state"
    model = client.get("/v1/model")
    assert model.headers["etag"] == '"1"' and model.json()["active_edits"] == [edit_id]
    reverted = client.post(f"/v1/edits/{edit_id}/revert", headers={"If-Match": '"1"'})
    assert reverted.status_code == 200 and reverted.headers["etag"] == '"2"'
    assert reverted.json()["state"] == {"version": 2, "active_edits": []}
    assert reverted.json()["edit"]["status"] == "reverted" and reverted.json()["edit"]["reverted_at"]
    with factory() as session:
        events = session.query(StateEvent).order_by(StateEvent.version).all()
        assert [(e.action, e.version, e.actor) for e in events] == [("apply", 1, "api"), ("revert", 2, "api")]
    nudges.close()


def test_an_edit_returns_its_applies_and_reverts_oldest_first(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    edit_id, other = _computed(client, factory), _computed(client, factory)
    assert client.get(f"/v1/edits/{edit_id}").json()["history"] == []
    for path in (f"{edit_id}/apply", f"{other}/apply", f"{edit_id}/revert", f"{edit_id}/apply"):
        changed = client.post(f"/v1/edits/{path}")
        assert changed.status_code == 200, changed.text

    history = client.get(f"/v1/edits/{edit_id}").json()["history"]
    assert [(e["action"], e["actor"], e["state_version"]) for e in history] == [
        ("apply", "api", 1),
        ("revert", "api", 3),
        ("apply", "api", 4),
    ]
    times = [datetime.fromisoformat(e["at"]) for e in history]
    assert times == sorted(times) and all(t.tzinfo is not None for t in times)
    assert changed.json()["edit"]["history"] == history  # the apply's own answer includes it
    listed = {e["id"]: e["history"] for e in client.get("/v1/edits").json()["items"]}
    assert listed[edit_id] == history and [e["state_version"] for e in listed[other]] == [2]


def test_stale_if_match_is_412_with_current_version(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    first, second = _computed(client, factory), _computed(client, factory)
    assert client.post(f"/v1/edits/{first}/apply", headers={"If-Match": '"0"'}).status_code == 200
    before = snapshot(factory, queue)
    stale = client.post(f"/v1/edits/{second}/apply", headers={"If-Match": '"0"'})
    problem = assert_problem(stale, 412, "precondition-failed")
    assert problem["current_version"] == 1 and problem["expected_version"] == 0
    assert stale.headers["etag"] == '"1"'
    assert snapshot(factory, queue) == before


def test_malformed_if_match_is_422_and_changes_nothing(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    edit_id = _computed(client, factory)
    before = snapshot(factory, queue)
    response = client.post(f"/v1/edits/{edit_id}/apply", headers={"If-Match": '"abc"'})
    assert "If-Match" in assert_problem(response, 422, "validation")["detail"]
    assert snapshot(factory, queue) == before


def test_state_conflicts_are_409_and_change_nothing(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    (pending,) = _submit(client)
    computed = _computed(client, factory)
    before = snapshot(factory, queue)
    assert "not applied" in assert_problem(client.post(f"/v1/edits/{computed}/revert"), 409, "conflict")["detail"]
    assert_problem(client.post(f"/v1/edits/{pending}/revert"), 409, "conflict")
    assert_problem(client.post(f"/v1/edits/{pending}/apply"), 409, "conflict")
    assert snapshot(factory, queue) == before
    assert client.post(f"/v1/edits/{computed}/apply").status_code == 200
    before = snapshot(factory, queue)
    assert_problem(client.post(f"/v1/edits/{computed}/apply"), 409, "conflict")  # already applied
    assert snapshot(factory, queue) == before


def test_delta_download(client: TestClient, factory: sessionmaker[Session]) -> None:
    (pending,) = _submit(client)
    assert "no delta" in assert_problem(client.get(f"/v1/edits/{pending}/delta"), 404, "not-found")["detail"]
    edit_id = _computed(client, factory)
    response = client.get(f"/v1/edits/{edit_id}/delta")
    assert response.status_code == 200
    assert response.content == DELTA_BYTES
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["etag"] == f'"{hashlib.sha256(DELTA_BYTES).hexdigest()}"'
    assert response.headers["content-disposition"] == f'attachment; filename="edit-{edit_id}.safetensors"'
    again = client.get(f"/v1/edits/{edit_id}/delta", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_tampered_delta_is_not_served(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id = _computed(client, factory)
    with factory() as session:
        session.execute(update(StoredDelta).where(StoredDelta.edit_id == edit_id).values(data=b"tampered"))
        session.commit()
    response = client.get(f"/v1/edits/{edit_id}/delta")
    assert_problem(response, 500, "delta-corrupt")
    assert b"tampered" not in response.content


def test_an_edit_changes_the_state_of_its_own_model_only(client: TestClient, factory: sessionmaker[Session]) -> None:
    from service.db import Edit

    edit_id = _computed(client, factory)
    with factory() as session:
        session.execute(update(Edit).where(Edit.id == edit_id).values(base_model="other-model"))
        session.commit()
    ours = client.get("/v1/model").json()
    response = client.post(f"/v1/edits/{edit_id}/apply")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == {"version": 1, "active_edits": [edit_id]}
    assert client.get("/v1/model").json()["state_version"] == ours["state_version"]  # the gateway's model: untouched
    other = client.get("/v1/model", params={"model": "other-model"}).json()
    assert (other["base_model"], other["state_version"], other["active_edits"]) == ("other-model", 1, [edit_id])
    assert client.post(f"/v1/edits/{edit_id}/revert").json()["state"] == {"version": 2, "active_edits": []}


def test_listing_is_stable_for_edits_created_in_the_same_instant(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    from service.db import Edit

    ids = _submit(client, 5)
    stamp = client.get(f"/v1/edits/{ids[0]}").json()["created_at"]
    with factory() as session:
        edit = session.get(Edit, ids[0])
        assert edit is not None
        session.execute(update(Edit).values(created_at=edit.created_at))
        session.commit()
    time.sleep(0.01)
    seen, cursor = [], None
    while True:
        page = client.get("/v1/edits", params={"limit": 2} | ({"cursor": cursor} if cursor else {})).json()
        seen += [e["id"] for e in page["items"]]
        assert all(e["created_at"] == stamp for e in page["items"])
        if not (cursor := page["next_cursor"]):
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5 and seen == sorted(ids, reverse=True)
