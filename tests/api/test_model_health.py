"""/v1/model convergence, readiness, metrics, the OpenAPI document, and the Redis queue behind the API."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from api.schemas import finished_job_model
from service.db import utcnow
from service.jobs import InProcessQueue
from service.jobs.redis_queue import RedisQueue
from service.settings import Settings
from service.usecases.kinds import KINDS
from tests.api.support import BASE_MODEL, EDIT_BODY, add_worker, compute_edit, set_job, snapshot
from workers import Worker


def _apply_one(client: TestClient, factory: sessionmaker[Session]) -> str:
    edit_id = client.post("/v1/edits", json=EDIT_BODY).json()["id"]
    compute_edit(factory, edit_id)
    assert client.post(f"/v1/edits/{edit_id}/apply").status_code == 200
    return edit_id


def test_model_without_state_or_workers(client: TestClient, factory: sessionmaker[Session]) -> None:
    before = snapshot(factory, InProcessQueue())
    response = client.get("/v1/model")
    assert response.status_code == 200 and response.headers["etag"] == '"0"'
    assert response.json() == {
        "base_model": BASE_MODEL,
        "served": False,
        "family": None,
        "dtype": None,
        "n_layers": None,
        "fingerprint": None,
        "state_version": 0,
        "active_edits": [],
        "pristine_bytes": None,
        "workers": [],
        "converged": False,
    }
    assert snapshot(factory, InProcessQueue()) == before  # reading creates no state row


OURS = {"model": BASE_MODEL}  # another model is served too: name ours


def test_model_converged_only_when_every_live_worker_is_current(
    client: TestClient, factory: sessionmaker[Session]
) -> None:
    edit_id = _apply_one(client, factory)
    stale = utcnow() - timedelta(seconds=120)
    add_worker(factory, "w-dead", version=0, heartbeat=stale)  # behind, but not alive: ignored
    add_worker(factory, "w-other-model", version=0, base_model="other-model")  # another model: not listed
    model = client.get("/v1/model", params=OURS).json()
    assert model["state_version"] == 1 and model["active_edits"] == [edit_id]
    assert [w["id"] for w in model["workers"]] == ["w-dead"] and model["workers"][0]["alive"] is False
    assert model["converged"] is False and model["fingerprint"] is None  # no live worker

    add_worker(factory, "w-1", version=1)
    model = client.get("/v1/model", params=OURS).json()
    assert model["converged"] is True and model["fingerprint"] == "f" * 64
    live = {w["id"]: w for w in model["workers"]}
    assert live["w-1"]["alive"] is True and live["w-1"]["state_version"] == 1 and live["w-1"]["weights_checksum"]

    add_worker(factory, "w-2", version=0)
    assert client.get("/v1/model", params=OURS).json()["converged"] is False

    add_worker(factory, "w-3", version=1, status="stopped")
    model = client.get("/v1/model", params=OURS).json()
    assert {w["id"]: w["alive"] for w in model["workers"]}["w-3"] is False


def test_an_applied_edit_is_converged_in_the_next_response(embedded: tuple[TestClient, Worker]) -> None:
    client, worker = embedded
    pristine = client.get("/v1/model").json()["workers"][0]["weights_checksum"]
    body = {**EDIT_BODY, "layers": [1, 2], "method": "creme", "apply": "always"}
    edit = client.post("/v1/edits", json=body, headers={"Prefer": "wait=120"})
    assert edit.status_code == 200 and edit.json()["status"] == "applied", edit.text

    model = client.get("/v1/model").json()  # long before the next heartbeat
    assert model["state_version"] == 1 and model["converged"] is True
    [row] = model["workers"]
    assert row["state_version"] == 1 and row["weights_checksum"] == worker.weights.checksum() != pristine


def test_logit_lens_ranks_are_integers(embedded: tuple[TestClient, Worker]) -> None:
    client, _ = embedded
    body = {"prompt": EDIT_BODY["prompt"], "targets": ["Tokyo", "Daisuke Sasaki"], "top_k": 2}
    response = client.post("/v1/analyses/logit-lens", json=body, headers={"Prefer": "wait=60"})
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    layers = response.json()["result"]["layers"]
    ranks = [stat["rank"] for layer in layers for stat in layer["targets"]]
    assert len(ranks) == 2 * len(layers) and all(type(rank) is int and rank >= 1 for rank in ranks)
    assert finished_job_model(KINDS["logit-lens"]).model_validate_json(response.text).result is not None
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["LensTarget"]["properties"]["rank"]["type"] == "integer"


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_needs_a_live_worker(client: TestClient, factory: sessionmaker[Session]) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["content-type"] == "application/problem+json"
    checks = response.json()["checks"]
    assert checks["database"]["ok"] and checks["queue"]["ok"] and not checks["workers"]["ok"]
    add_worker(factory, "w-old", version=0, heartbeat=utcnow() - timedelta(seconds=60))
    assert client.get("/readyz").status_code == 503
    add_worker(factory, "w-new", version=0)
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["checks"]["workers"]["live"] == 1


def test_readyz_reports_a_dead_queue(settings: Settings, factory: sessionmaker[Session]) -> None:
    add_worker(factory, "w-1", version=0)
    closed = InProcessQueue()
    closed.close()
    with TestClient(create_app(settings, session_factory=factory, queue=closed)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["queue"] == {"ok": False}


def test_metrics_expose_requests_jobs_and_queue(client: TestClient, factory: sessionmaker[Session]) -> None:
    job_id = client.post("/v1/edits", json=EDIT_BODY).json()["job"]["id"]
    client.post("/v1/edits", json={})
    client.get("/v1/edits/unknown")
    client.post("/v1/edits", content=b"x" * 30_000, headers={"content-type": "application/json"})
    client.get("/no/such/path")
    client.post("/v1/edits", json=EDIT_BODY)
    set_job(factory, job_id, "succeeded", result={})
    samples = _samples(client.get("/metrics").text)
    requests = "creme_http_requests_total"
    expected = {
        (requests, ("method", "POST"), ("route", "/v1/edits"), ("status", "202")): 2.0,
        (requests, ("method", "POST"), ("route", "/v1/edits"), ("status", "422")): 1.0,
        (requests, ("method", "POST"), ("route", "/v1/edits"), ("status", "413")): 1.0,
        (requests, ("method", "GET"), ("route", "/v1/edits/{edit_id}"), ("status", "404")): 1.0,
        (requests, ("method", "GET"), ("route", "<unmatched>"), ("status", "404")): 1.0,
        ("creme_queue_depth", ("base_model", BASE_MODEL)): 2.0,
        ("creme_jobs", ("kind", "edit"), ("status", "queued")): 1.0,
        ("creme_jobs", ("kind", "edit"), ("status", "succeeded")): 1.0,
        ("creme_job_duration_seconds_count", ("kind", "edit"), ("status", "succeeded")): 1.0,
        ("creme_job_duration_seconds_bucket", ("kind", "edit"), ("le", "1.0"), ("status", "succeeded")): 0.0,
        ("creme_job_duration_seconds_bucket", ("kind", "edit"), ("le", "2.5"), ("status", "succeeded")): 1.0,
        ("creme_state_version", ("base_model", BASE_MODEL)): 0.0,
        ("creme_live_workers", ("base_model", BASE_MODEL)): 0.0,
    }
    for key, value in expected.items():
        assert samples.get(key) == value, key
    latency = ("creme_http_request_duration_seconds_count", ("method", "POST"), ("route", "/v1/edits"))
    assert samples[(*latency, ("status", "202"))] == 2.0


def _samples(text: str) -> dict[tuple[object, ...], float]:
    """Every sample of a Prometheus exposition, keyed by name and sorted label pairs."""
    out: dict[tuple[object, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return out


def test_openapi_schema_generates(app: FastAPI, client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in (
        "/v1/edits",
        "/v1/edits/{edit_id}",
        "/v1/edits/{edit_id}/apply",
        "/v1/edits/{edit_id}/revert",
        "/v1/edits/{edit_id}/delta",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/model",
        "/v1/score",
        "/v1/generate",
        "/v1/analyses/logit-lens",
        "/v1/analyses/locate",
        "/v1/analyses/intervention",
        "/v1/analyses/compositionality",
        "/v1/analyses/{job_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert "Problem" in schema["components"]["schemas"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # 422s are documented as problems
    assert set(paths["/v1/edits"]["post"]["responses"]) >= {"200", "202", "413", "422", "503"}


@pytest.mark.redis
def test_submit_edit_through_redis(settings: Settings, factory: sessionmaker[Session], redis_url: str) -> None:
    prefix = f"creme-test-api:{uuid.uuid4().hex}"
    queue = RedisQueue(redis_url, stream=f"{prefix}:jobs", nudge_channel=f"{prefix}:nudge")
    try:
        with TestClient(create_app(settings, session_factory=factory, queue=queue)) as client:
            before = snapshot(factory, queue)
            bad = client.post("/v1/edits", json={**EDIT_BODY, "hop1_phrase": "elsewhere"})
            assert bad.status_code == 422 and snapshot(factory, queue) == before
            response = client.post("/v1/edits", json=EDIT_BODY)
            assert response.status_code == 202
            model_queue = queue.for_model(BASE_MODEL)
            assert model_queue.stream == f"{prefix}:jobs:{BASE_MODEL}" and model_queue.depth() == 1
            delivery = model_queue.receive("test-worker", timeout=2)
            assert delivery is not None and delivery.job_id == response.json()["job"]["id"]
            model_queue.ack(delivery)
            add_worker(factory, "w-1", version=0)
            assert client.get("/readyz").status_code == 200
    finally:
        queue.close()
        client_ = redis.Redis.from_url(redis_url)
        client_.delete(f"{prefix}:jobs")
        client_.close()
