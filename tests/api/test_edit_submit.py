"""POST /v1/edits: acceptance, every refusal leaving the database and queue untouched, waiting, outages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.db import Edit, Job, make_engine, make_session_factory
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.api.support import BASE_MODEL, EDIT_BODY, FakeWorker, compute_edit, set_job, snapshot
from tests.support import assert_problem


def test_submit_edit_creates_pending_edit_and_queued_job(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    body = {**EDIT_BODY, "paraphrases": ["Which city is the capital of the country of Mount Fuji?"], "layers": [4, 5]}
    response = client.post("/v1/edits", json=body)
    assert response.status_code == 202, response.text
    data = response.json()
    assert data["status"] == "pending"
    assert data["job"]["url"] == f"/v1/jobs/{data['job']['id']}"
    assert response.headers["location"] == data["job"]["url"]
    assert queue.for_model(BASE_MODEL).depth() == 1
    with factory() as session:
        edit = session.get(Edit, data["id"])
        job = session.get(Job, data["job"]["id"])
        assert edit is not None and job is not None
        assert (edit.status, edit.base_model, edit.job_id, edit.layers) == ("pending", BASE_MODEL, job.id, [4, 5])
        assert edit.request["paraphrases"] == body["paraphrases"] and edit.request["apply"] == "if_safe"
        assert (job.kind, job.status, job.payload) == ("edit", "queued", {"edit_id": edit.id})
    shown = client.get(f"/v1/edits/{data['id']}").json()
    assert shown["status"] == "pending" and shown["job_id"] == job.id and shown["metrics"] is None


def _too_long(settings: Settings) -> str:
    return "x" * (settings.max_prompt_chars + 1)


BAD_EDITS: list[tuple[str, Any, str]] = [
    ("empty answer", {**EDIT_BODY, "answer": ""}, "answer"),
    ("empty prompt", {**EDIT_BODY, "prompt": ""}, "prompt"),
    ("whitespace bridge", {**EDIT_BODY, "bridge": "   \t"}, "bridge"),
    ("hop1 not in prompt", {**EDIT_BODY, "hop1_phrase": "the river Nile"}, "hop1_phrase"),
    ("oversized prompt", "LONG", "prompt"),
    (
        "too many eval queries",
        {**EDIT_BODY, "paraphrases": ["q?"] * 3, "specificity": [{"prompt": "a", "answer": "b"}] * 2},
        "body",
    ),
    ("blank paraphrase", {**EDIT_BODY, "paraphrases": [" "]}, "paraphrases"),
    ("unknown layer", {**EDIT_BODY, "layers": [4, 30]}, "layers"),
    ("negative layer", {**EDIT_BODY, "layers": [-1]}, "layers"),
    ("empty layers", {**EDIT_BODY, "layers": []}, "layers"),
    ("repeated layers", {**EDIT_BODY, "layers": [3, 3]}, "layers"),
    ("unknown method", {**EDIT_BODY, "method": "rome"}, "method"),
    ("unknown apply policy", {**EDIT_BODY, "apply": "sometimes"}, "apply"),
    ("unknown field", {**EDIT_BODY, "hop_one": "x"}, "hop_one"),
    ("probe without answer", {**EDIT_BODY, "generalization": [{"prompt": "p"}]}, "generalization"),
    ("not an object", ["prompt"], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_EDITS, ids=[c for c, _, _ in BAD_EDITS])
def test_bad_edit_is_a_precise_422_and_changes_nothing(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    settings: Settings,
    case: str,
    body: Any,
    field: str,
) -> None:
    if body == "LONG":
        body = {**EDIT_BODY, "prompt": _too_long(settings) + " " + EDIT_BODY["hop1_phrase"]}
    before = snapshot(factory, queue)
    problem = assert_problem(client.post("/v1/edits", json=body), 422, "validation")
    assert any(field in e["loc"] for e in problem["errors"]), problem
    assert field in problem["detail"]
    assert snapshot(factory, queue) == before


def test_invalid_json_and_wrong_content_are_422(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    before = snapshot(factory, queue)
    bad = client.post("/v1/edits", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(bad, 422, "validation")
    assert_problem(client.post("/v1/edits"), 422, "validation")
    assert snapshot(factory, queue) == before


def test_oversized_body_is_413_by_content_length_and_by_stream(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, settings: Settings
) -> None:
    before = snapshot(factory, queue)
    huge = json.dumps({**EDIT_BODY, "paraphrases": ["x" * 100] * 300}).encode()
    assert len(huge) > settings.max_body_bytes
    sized = client.post("/v1/edits", content=huge, headers={"content-type": "application/json"})
    assert_problem(sized, 413, "payload-too-large")

    def chunks() -> Any:
        for i in range(0, len(huge), 1000):
            yield huge[i : i + 1000]

    streamed = client.post("/v1/edits", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(streamed, 413, "payload-too-large")
    assert snapshot(factory, queue) == before


def test_queue_full_is_429_and_changes_nothing(
    settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    app = create_app(settings.model_copy(update={"max_queue_depth": 1}), session_factory=factory, queue=queue)
    with TestClient(app) as client:
        assert client.post("/v1/edits", json=EDIT_BODY).status_code == 202
        before = snapshot(factory, queue)
        response = client.post("/v1/edits", json=EDIT_BODY)
        assert_problem(response, 429, "queue-full")
        assert response.headers["retry-after"]
        assert snapshot(factory, queue) == before


def test_idempotency_key_replays_and_refuses_a_different_request(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    first = client.post("/v1/edits", json=EDIT_BODY, headers={"Idempotency-Key": "k-1"})
    again = client.post("/v1/edits", json=EDIT_BODY, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    before = snapshot(factory, queue)
    other = client.post("/v1/edits", json={**EDIT_BODY, "answer": "Kyoto"}, headers={"Idempotency-Key": "k-1"})
    assert_problem(other, 422, "idempotency-key-reused")
    assert snapshot(factory, queue) == before
    assert queue.for_model(BASE_MODEL).depth() == 1


def test_prefer_wait_returns_the_finished_edit(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    def finish(session: Session, job: Job) -> None:
        compute_edit(factory, job.payload["edit_id"], metrics={"efficacy": 1.0, "delta_norms": {"4": 0.5}})
        job.status, job.result = "succeeded", {"edit_id": job.payload["edit_id"]}

    worker = FakeWorker(factory, queue, finish)
    worker.start()
    response = client.post("/v1/edits", json=EDIT_BODY, headers={"Prefer": "wait=10"})
    worker.join(10)
    assert worker.error is None
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=3"  # capped at max_wait_seconds
    edit = response.json()
    assert edit["status"] == "computed" and edit["metrics"]["efficacy"] == 1.0
    assert edit["delta_norms"] == {"4": 0.5} and edit["layers"] == [4, 5] and edit["state_version"] == 0


def test_prefer_wait_times_out_with_202(client: TestClient) -> None:
    response = client.post("/v1/edits", json=EDIT_BODY, headers={"Prefer": "respond-async, wait=0.2"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0.2"
    assert response.json()["status"] == "pending"


def test_failed_job_with_wait_returns_the_failed_edit(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    error = {"type": "https://creme.dev/problems/unknown-layer", "title": "Unknown layer", "status": 422}

    def finish(session: Session, job: Job) -> None:
        edit = session.get(Edit, job.payload["edit_id"])
        assert edit is not None
        edit.status, edit.error = "failed", error
        job.status, job.error = "failed", error

    worker = FakeWorker(factory, queue, finish)
    worker.start()
    response = client.post("/v1/edits", json=EDIT_BODY, headers={"Prefer": "wait=3"})
    worker.join(10)
    assert response.status_code == 200
    assert response.json()["status"] == "failed" and response.json()["error"] == error


def test_enqueue_failure_after_commit_still_answers_202(settings: Settings, factory: sessionmaker[Session]) -> None:
    closed = InProcessQueue()
    closed.close()
    with TestClient(create_app(settings, session_factory=factory, queue=closed)) as client:
        response = client.post("/v1/edits", json=EDIT_BODY)
    assert response.status_code == 202
    with factory() as session:
        job = session.get(Job, response.json()["job"]["id"])
        assert job is not None and job.status == "queued"  # the sweep re-enqueues it


def test_database_down_is_503_without_a_trace(settings: Settings) -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/creme", connect_args={"connect_timeout": 2})
    queue = InProcessQueue()
    app = create_app(settings, session_factory=make_session_factory(engine), queue=queue)
    with TestClient(app) as client:
        for response in (client.post("/v1/edits", json=EDIT_BODY), client.get("/v1/edits"), client.get("/v1/model")):
            problem = assert_problem(response, 503, "database-unavailable")
            assert "Traceback" not in response.text and "psycopg" not in problem["detail"]
        assert queue.for_model(BASE_MODEL).depth() == 0
    engine.dispose()


def test_hop1_phrase_match_is_case_insensitive(client: TestClient, factory: sessionmaker[Session]) -> None:
    body = {**EDIT_BODY, "hop1_phrase": "THE COUNTRY where mount fuji IS LOCATED"}
    assert client.post("/v1/edits", json=body).status_code == 202


def test_set_job_helper_marks_terminal(client: TestClient, factory: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/edits", json=EDIT_BODY).json()["job"]["id"]
    set_job(factory, job_id, "succeeded", result={"ok": True})
    assert client.get(f"/v1/jobs/{job_id}").json()["result"] == {"ok": True}


def test_an_edit_without_bridge_and_answer_waits_for_the_worker_to_infer_them(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    short = {"prompt": EDIT_BODY["prompt"], "hop1_phrase": EDIT_BODY["hop1_phrase"]}
    response = client.post("/v1/edits", json=short)
    assert response.status_code == 202, response.text
    shown = client.get(response.json()["url"]).json()
    assert (shown["bridge"], shown["answer"]) == (None, None)
    assert shown["inferred"] == {"bridge": True, "answer": True}
    with factory() as session:
        edit = session.get(Edit, shown["id"])
        assert edit is not None and (edit.bridge, edit.answer) == (None, None)
        assert (edit.request["bridge"], edit.request["answer"]) == (None, None)
        edit.bridge, edit.answer = "Japan", "Tokyo"  # as the worker stores them once inferred
        session.commit()
    shown = client.get(response.json()["url"]).json()
    assert (shown["bridge"], shown["answer"], shown["inferred"]) == ("Japan", "Tokyo", {"bridge": True, "answer": True})

    given = client.post("/v1/edits", json={**short, "bridge": "Japan"}).json()
    assert client.get(given["url"]).json()["inferred"] == {"bridge": False, "answer": True}


ANALYSIS_BODIES: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("locate", {"prompt": EDIT_BODY["prompt"], "hop1_phrase": EDIT_BODY["hop1_phrase"]}, 202, None),
    ("intervention", {"prompt": EDIT_BODY["prompt"], "hop1_phrase": EDIT_BODY["hop1_phrase"]}, 202, None),
    ("intervention", {"prompt": EDIT_BODY["prompt"], "bridge": "Japan"}, 422, "hop1_phrase"),
    ("intervention", {"prompt": EDIT_BODY["prompt"], "hop1_phrase": "the river Nile"}, 422, "hop1_phrase"),
]


@pytest.mark.parametrize(("kind", "body", "status", "field"), ANALYSIS_BODIES)
def test_analyses_infer_what_they_need_given_the_first_hop_phrase(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    kind: str,
    body: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    before = snapshot(factory, queue)
    response = client.post(f"/v1/analyses/{kind}", json=body)
    assert response.status_code == status, response.text
    if field is not None:
        assert [e["loc"] for e in response.json()["errors"]] == [["body", field]]
        assert snapshot(factory, queue) == before
    else:
        job = client.get(response.json()["url"]).json()
        assert job["payload"]["bridge"] is None and job["payload"]["answer"] is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [({}, "english"), ({"method": "creme"}, "published"), ({"templates": "published"}, "published")],
)
def test_an_edit_naming_no_templates_records_its_methods_default_set(
    client: TestClient, extra: dict[str, str], expected: str
) -> None:
    """On the embedded model auto defaults to the English templates, creme to the published ones."""
    data = client.post("/v1/edits", json={**EDIT_BODY, **extra}).json()
    assert client.get(f"/v1/edits/{data['id']}").json()["templates"] == expected
