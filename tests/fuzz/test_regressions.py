"""The bugs the fuzzing found, pinned as plain tests on both database backends."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.jobs import InProcessQueue
from service.usecases.jobs import submit_job
from service.usecases.validation import Limits
from tests.api.support import EDIT_BODY
from tests.fixtures.app import build_app
from tests.fuzz.conftest import fuzz_settings, seed
from tests.support import PROBLEM, assert_problem

SUBMIT_ROUTES = {
    "/v1/edits": EDIT_BODY,
    "/v1/score": {"prompt": "The capital of Japan is", "answers": ["Tokyo"]},
    "/v1/analyses/logit-lens": {"prompt": "The capital of Japan is"},
}


@pytest.fixture
def app(factory: sessionmaker[Session]) -> Iterator[FastAPI]:
    queue = InProcessQueue()
    yield build_app(fuzz_settings(), factory, queue)
    queue.close()


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _cursor(stamp: str, row_id: str) -> str:
    raw = json.dumps([stamp, row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("path", list(SUBMIT_ROUTES))
def test_empty_idempotency_key_is_refused_not_a_500(client: TestClient, path: str) -> None:
    for _ in range(2):  # the second request used to hit the unique index on jobs.idempotency_key
        response = client.post(path, json=SUBMIT_ROUTES[path], headers={"Idempotency-Key": ""})
        body = assert_problem(response, 422, "validation")
        assert body["errors"][0]["loc"] == ["header", "idempotency-key"]


def test_empty_idempotency_key_is_no_key_in_the_use_case(factory: sessionmaker[Session]) -> None:
    queue = InProcessQueue()
    try:
        with factory() as session:
            payload = SUBMIT_ROUTES["/v1/score"]
            first = submit_job(session, queue, "score", payload, limits=Limits(), idempotency_key="")
            second = submit_job(session, queue, "score", payload, limits=Limits(), idempotency_key="")
            assert first.id != second.id
            assert first.idempotency_key is None and second.idempotency_key is None
    finally:
        queue.close()


@pytest.mark.parametrize("path", list(SUBMIT_ROUTES))
def test_body_that_is_not_utf8_is_a_declared_400(client: TestClient, app: FastAPI, path: str) -> None:
    response = client.post(path, content=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert_problem(response, 400)
    assert "400" in app.openapi()["paths"][path]["post"]["responses"]


def test_ids_with_nul_are_not_found(client: TestClient, app: FastAPI, factory: sessionmaker[Session]) -> None:
    seeded = seed(app, factory)
    edit, job = seeded.edit_ids[0] + "%00", seeded.job_ids[0] + "%00"
    routes = [
        ("GET", f"/v1/edits/{edit}"),
        ("POST", f"/v1/edits/{edit}/apply"),
        ("POST", f"/v1/edits/{edit}/revert"),
        ("GET", f"/v1/edits/{edit}/delta"),
        ("GET", f"/v1/edits/{edit}/peft"),
        ("GET", f"/v1/jobs/{job}"),
        ("POST", f"/v1/jobs/{job}/cancel"),
        ("GET", f"/v1/analyses/{job}"),
    ]
    for method, path in routes:
        assert_problem(client.request(method, path), 404, "not-found")


@pytest.mark.parametrize("field", ["prompt", "answer", "bridge"])
def test_text_with_nul_is_invalid(client: TestClient, field: str) -> None:
    body: dict[str, Any] = {**EDIT_BODY, field: EDIT_BODY[field] + "\x00"}
    problem = assert_problem(client.post("/v1/edits", json=body), 422, "validation")
    assert [(e["loc"], e["type"]) for e in problem["errors"]] == [(["body", field], "string_nul")]
    response = client.post("/v1/score", json={"prompt": "a\x00b", "answers": ["x"]})
    assert_problem(response, 422, "validation")


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("2024-01-01T00:00:00+00:00", "a\x00b"),
        _cursor("0001-01-01T00:00:00+05:00", "x"),  # before the first representable UTC instant
        _cursor("9999-12-31T23:59:59-05:00", "x"),  # after the last
    ],
)
@pytest.mark.parametrize("path", ["/v1/edits", "/v1/jobs"])
def test_forged_cursors_are_invalid(client: TestClient, path: str, cursor: str) -> None:
    assert_problem(client.get(path, params={"cursor": cursor}), 422, "validation")


def test_replaying_a_cancelled_query_is_a_declared_409(client: TestClient, app: FastAPI) -> None:
    body, key = SUBMIT_ROUTES["/v1/score"], {"Idempotency-Key": "score-once"}
    job_id = client.post("/v1/score", json=body, headers=key).json()["id"]
    assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    problem = assert_problem(client.post("/v1/score", json=body, headers=key), 409)
    assert problem["job_id"] == job_id
    for path in ("/v1/score", "/v1/generate"):
        assert "409" in app.openapi()["paths"][path]["post"]["responses"]


def test_every_error_response_is_documented_as_problem_json_only(app: FastAPI) -> None:
    document = app.openapi()
    assert "Problem" in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")):
                    content = response.get("content", {})
                    assert list(content) == [PROBLEM], f"{method.upper()} {path} {status}: {list(content)}"
                    assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
