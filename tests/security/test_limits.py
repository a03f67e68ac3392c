"""Request limits: queue depth (429 + Retry-After), the `Prefer: wait` cap, body size, text and query counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.api.support import EDIT_BODY, compute_edit, snapshot
from tests.support import assert_problem

JOB_POSTS: list[tuple[str, dict[str, Any]]] = [
    ("/v1/edits", EDIT_BODY),
    ("/v1/score", {"prompt": EDIT_BODY["prompt"], "answers": ["Tokyo"]}),
    ("/v1/generate", {"prompt": "Hello"}),
    ("/v1/analyses/logit-lens", {"prompt": EDIT_BODY["prompt"]}),
    ("/v1/analyses/locate", {k: EDIT_BODY[k] for k in ("prompt", "hop1_phrase", "bridge", "answer")}),
    ("/v1/analyses/intervention", {"prompt": EDIT_BODY["prompt"], "bridge": "Japan", "answer": "Tokyo"}),
]


@pytest.fixture
def full_client(settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue) -> Iterator[TestClient]:
    """A client whose queue holds its limit: one queued job with ``max_queue_depth=1``."""
    app = create_app(settings.model_copy(update={"max_queue_depth": 1}), session_factory=factory, queue=queue)
    with TestClient(app) as client:
        first = client.post("/v1/edits", json=EDIT_BODY, headers={"Idempotency-Key": "first"})
        assert first.status_code == 202
        yield client


@pytest.mark.parametrize(("path", "body"), JOB_POSTS, ids=[p for p, _ in JOB_POSTS])
def test_a_full_queue_is_429_with_retry_after_and_changes_nothing(
    full_client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    path: str,
    body: dict[str, Any],
) -> None:
    before = snapshot(factory, queue)
    response = full_client.post(path, json=body)
    problem = assert_problem(response, 429, "queue-full")
    assert int(response.headers["retry-after"]) > 0
    assert (problem["queued"], problem["limit"]) == (1, 1)
    assert snapshot(factory, queue) == before


def test_a_replay_is_answered_even_when_the_queue_is_full(full_client: TestClient) -> None:
    again = full_client.post("/v1/edits", json=EDIT_BODY, headers={"Idempotency-Key": "first"})
    assert again.status_code == 202


def test_reads_and_state_changes_are_not_limited_by_the_queue(
    full_client: TestClient, factory: sessionmaker[Session]
) -> None:
    edits = full_client.get("/v1/edits")
    assert edits.status_code == 200
    assert full_client.get("/v1/jobs?status=queued").json()["items"]
    edit_id = edits.json()["items"][0]["id"]
    compute_edit(factory, edit_id)
    assert full_client.post(f"/v1/edits/{edit_id}/apply").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/edits", EDIT_BODY),
        ("/v1/analyses/logit-lens", {"prompt": EDIT_BODY["prompt"]}),
        ("/v1/score", {"prompt": EDIT_BODY["prompt"], "answers": ["Tokyo"]}),
    ],
)
def test_prefer_wait_is_capped_and_says_so(
    client: TestClient, settings: Settings, path: str, body: dict[str, Any]
) -> None:
    started = time.monotonic()
    response = client.post(path, json=body, headers={"Prefer": "wait=3600"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.text  # no worker: still queued after the cap
    assert response.headers["preference-applied"] == f"wait={settings.max_wait_seconds:g}"
    assert settings.max_wait_seconds - 0.1 <= elapsed < settings.max_wait_seconds + 5


def test_a_wait_below_the_cap_is_kept(client: TestClient) -> None:
    response = client.post("/v1/analyses/logit-lens", json={"prompt": "p"}, headers={"Prefer": "wait=0.1"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=0.1"


def test_an_oversized_body_is_413_before_anything_else(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, settings: Settings
) -> None:
    before = snapshot(factory, queue)
    huge = b'{"prompt": "' + b"x" * settings.max_body_bytes + b'"}'
    response = client.post("/v1/score", content=huge, headers={"content-type": "application/json"})
    assert_problem(response, 413, "payload-too-large")
    assert snapshot(factory, queue) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/edits", {**EDIT_BODY, "answer": "x" * 201}, "answer"),
        ("/v1/edits", {**EDIT_BODY, "paraphrases": ["q?"] * 5}, "body"),
        ("/v1/score", {"prompt": "x" * 201, "answers": ["a"]}, "prompt"),
        ("/v1/score", {"prompt": "p", "answers": ["a"] * 5}, "answers"),
        ("/v1/analyses/logit-lens", {"prompt": "p", "targets": ["t"] * 5}, "targets"),
    ],
)
def test_text_length_and_query_counts_are_422(
    client: TestClient,
    factory: sessionmaker[Session],
    queue: InProcessQueue,
    path: str,
    body: dict[str, Any],
    field: str,
) -> None:
    before = snapshot(factory, queue)
    problem = assert_problem(client.post(path, json=body), 422, "validation")
    assert any(field in error["loc"] for error in problem["errors"]), problem
    assert snapshot(factory, queue) == before
