"""Jobs, analyses, and score/generate: reading, listing, cancelling, waiting for results."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.db import Edit, Job
from service.jobs import InProcessQueue
from tests.api.support import BASE_MODEL, EDIT_BODY, FakeWorker, set_job, snapshot
from tests.support import assert_problem

LOCATE = {**EDIT_BODY}
ANALYSES: dict[str, dict[str, Any]] = {
    "logit-lens": {"prompt": EDIT_BODY["prompt"], "targets": ["Tokyo", "Japan"]},
    "locate": LOCATE,
    "intervention": {"prompt": EDIT_BODY["prompt"], "bridge": "Japan", "answer": "Tokyo", "layers": [3, 4]},
    "compositionality": {
        "cases": [
            {
                "compositional": EDIT_BODY["prompt"],
                "hop1_phrase": EDIT_BODY["hop1_phrase"],
                "bridge": "Japan",
                "hop2": "The capital of Japan is",
                "answer": "Tokyo",
            }
        ]
    },
}


def _edit_job(client: TestClient) -> tuple[str, str]:
    data = client.post("/v1/edits", json=EDIT_BODY).json()
    return data["id"], data["job"]["id"]


def test_read_job(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id, job_id = _edit_job(client)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["kind"] == "edit" and job["status"] == "queued" and job["attempts"] == 0
    assert job["progress"] == {"step": 0, "total": None, "message": "queued"}
    assert job["payload"] == {"edit_id": edit_id} and job["result"] is None and job["error"] is None
    set_job(factory, job_id, "running", progress={"step": 3, "total": 10, "message": "optimising"}, attempts=1)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "running" and job["progress"]["step"] == 3 and job["started_at"]
    assert_problem(client.get("/v1/jobs/unknown"), 404, "not-found")


def test_list_jobs_filters_and_pages(client: TestClient, factory: sessionmaker[Session]) -> None:
    job_ids = [_edit_job(client)[1] for _ in range(3)]
    assert client.post("/v1/analyses/locate", json=LOCATE).status_code == 202
    set_job(factory, job_ids[0], "succeeded", result={})
    page = client.get("/v1/jobs", params={"limit": 2}).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get("/v1/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert len(rest["items"]) == 2 and rest["next_cursor"] is None
    assert [j["id"] for j in client.get("/v1/jobs", params={"status": "succeeded"}).json()["items"]] == job_ids[:1]
    assert len(client.get("/v1/jobs", params={"kind": "edit", "status": "queued"}).json()["items"]) == 2
    assert len(client.get("/v1/jobs", params={"kind": "locate"}).json()["items"]) == 1
    assert_problem(client.get("/v1/jobs", params={"kind": "rome"}), 422, "validation")
    assert_problem(client.get("/v1/jobs", params={"status": "done"}), 422, "validation")


def test_cancel_queued_job_cancels_it_and_fails_its_edit(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id, job_id = _edit_job(client)
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200
    job = response.json()
    assert job["status"] == "cancelled" and job["finished_at"] and job["cancel_requested"]
    assert job["error"]["type"] == "https://creme.dev/problems/cancelled"
    edit = client.get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "failed" and edit["error"]["type"].endswith("/cancelled")


def test_cancel_running_job_requests_cancellation(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id, job_id = _edit_job(client)
    set_job(factory, job_id, "running")
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "running" and response.json()["cancel_requested"] is True
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "pending"  # the worker decides


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
def test_cancel_terminal_job_is_409_and_changes_nothing(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, status: str
) -> None:
    _, job_id = _edit_job(client)
    set_job(factory, job_id, status)
    before = snapshot(factory, queue)
    assert status in assert_problem(client.post(f"/v1/jobs/{job_id}/cancel"), 409, "conflict")["detail"]
    assert snapshot(factory, queue) == before
    assert_problem(client.post("/v1/jobs/unknown/cancel"), 404, "not-found")


@pytest.mark.parametrize("kind", list(ANALYSES))
def test_submit_analysis(client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, kind: str) -> None:
    response = client.post(f"/v1/analyses/{kind}", json=ANALYSES[kind])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["kind"] == kind and body["status"] == "queued" and body["url"] == f"/v1/analyses/{body['id']}"
    assert response.headers["location"] == body["url"]
    assert queue.for_model(BASE_MODEL).depth() == 1
    with factory() as session:
        job = session.get(Job, body["id"])
        assert job is not None and job.kind == kind and job.payload["prompt" if kind != "compositionality" else "cases"]
    set_job(factory, body["id"], "succeeded", result={"layers": [1, 2]})
    shown = client.get(body["url"]).json()
    assert shown["status"] == "succeeded" and shown["result"] == {"layers": [1, 2]}


BAD_ANALYSES = [
    ("locate", {**LOCATE, "hop1_phrase": "the river Nile"}, "hop1_phrase"),
    ("locate", {**LOCATE, "window": 0}, "window"),
    ("logit-lens", {"prompt": "  "}, "prompt"),
    ("logit-lens", {"prompt": "p", "targets": ["a", "b", "c", "d", "e"]}, "targets"),
    ("intervention", {**ANALYSES["intervention"], "layers": [99]}, "layers"),
    ("compositionality", {"cases": []}, "cases"),
    ("compositionality", {"cases": [{"compositional": "x"}]}, "hop1_phrase"),
    ("logit-lens", {"prompt": "p", "extra": 1}, "extra"),
]


@pytest.mark.parametrize(("kind", "body", "field"), BAD_ANALYSES)
def test_bad_analysis_is_422_and_changes_nothing(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    kind: str,
    body: dict[str, Any],
    field: str,
) -> None:
    before = snapshot(factory, queue)
    problem = assert_problem(client.post(f"/v1/analyses/{kind}", json=body), 422, "validation")
    assert any(field in e["loc"] for e in problem["errors"]), problem
    assert snapshot(factory, queue) == before


def test_analysis_url_serves_only_analyses(client: TestClient) -> None:
    _, job_id = _edit_job(client)
    assert_problem(client.get(f"/v1/analyses/{job_id}"), 404, "not-found")


def test_score_waits_for_the_result(client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue) -> None:
    def finish(session: Session, job: Job) -> None:
        job.status = "succeeded"
        job.result = {"answers": [{"answer": a, "probability": 0.5} for a in job.payload["answers"]]}

    worker = FakeWorker(factory, queue, finish)
    worker.start()
    response = client.post("/v1/score", json={"prompt": EDIT_BODY["prompt"], "answers": ["Tokyo", "Kyoto"]})
    worker.join(10)
    assert worker.error is None
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["answers"] == [{"answer": "Tokyo", "probability": 0.5}, {"answer": "Kyoto", "probability": 0.5}]
    assert client.get(f"/v1/jobs/{body['job_id']}").json()["kind"] == "score"
    assert "preference-applied" not in response.headers


def test_generate_still_running_is_202(client: TestClient) -> None:
    body = {"prompt": "Hello", "max_new_tokens": 4}
    response = client.post("/v1/generate", json=body, headers={"Prefer": "wait=0.1"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0.1"
    job = response.json()
    assert job["kind"] == "generate" and job["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"


def test_failed_query_job_is_the_workers_problem(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue
) -> None:
    error = {"type": "https://creme.dev/problems/model-error", "title": "Model error", "status": 500, "detail": "x"}

    def finish(session: Session, job: Job) -> None:
        job.status, job.error = "failed", error

    worker = FakeWorker(factory, queue, finish)
    worker.start()
    response = client.post("/v1/generate", json={"prompt": "Hello"})
    worker.join(10)
    problem = assert_problem(response, 500)
    assert problem["type"] == error["type"] and problem["job_id"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/score", {"prompt": "p", "answers": []}),
        ("/v1/score", {"prompt": "p", "answers": ["a"] * 5}),
        ("/v1/score", {"prompt": "x" * 201, "answers": ["a"]}),
        ("/v1/generate", {"prompt": "p", "max_new_tokens": 0}),
        ("/v1/generate", {"prompt": ""}),
    ],
)
def test_bad_query_is_422_and_changes_nothing(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, path: str, body: dict[str, Any]
) -> None:
    before = snapshot(factory, queue)
    assert_problem(client.post(path, json=body), 422, "validation")
    assert snapshot(factory, queue) == before


def test_cancelled_queued_edit_job_leaves_applied_edits_alone(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    edit_id, job_id = _edit_job(client)
    with factory() as session:
        edit = session.get(Edit, edit_id)
        assert edit is not None
        edit.status = "computing"  # a worker already took it over: only pending edits are failed
        session.commit()
    client.post(f"/v1/jobs/{job_id}/cancel")
    assert client.get(f"/v1/edits/{edit_id}").json()["status"] == "computing"
