"""Structured logs: one line per HTTP request and one per finished job, as text or JSON."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.db.migrate import upgrade
from service.engine.loading import LoadedModel
from service.jobs import InProcessQueue
from service.logs import JsonFormatter
from service.settings import Settings
from tests.e2e.support import creme_env, creme_process, free_port
from tests.fixtures.app import api_settings
from tests.support import wait_for
from tests.workers.support import add_job, finished_job
from workers import Worker


@pytest.fixture
def settings() -> Settings:
    """The settings of the ``app`` fixture."""
    return api_settings()


def _events(caplog: pytest.LogCaptureFixture, logger: str) -> list[dict]:
    """The captured records of ``logger`` as the JSON format writes them."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == logger]


def test_each_request_logs_one_line_with_its_id(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="creme.requests"):
        ok = client.get("/v1/edits", params={"limit": 1})
        missing = client.get("/v1/edits/nope")
    events = _events(caplog, "creme.requests")
    assert [(e["method"], e["path"], e["status"]) for e in events] == [
        ("GET", "/v1/edits", 200),
        ("GET", "/v1/edits/nope", 404),
    ]
    assert [e["request_id"] for e in events] == [ok.headers["x-request-id"], missing.headers["x-request-id"]]
    assert all(isinstance(e["seconds"], float) and 0 <= e["seconds"] < 30 for e in events)
    text = [r.getMessage() for r in caplog.records if r.name == "creme.requests"]
    assert re.fullmatch(
        r"request request_id=[0-9a-f]{32} method=GET path=/v1/edits status=200 seconds=[0-9.e-]+", text[0]
    )


def test_a_worker_logs_one_line_per_finished_job(
    factory: sessionmaker[Session], tiny_llama: LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    queue = InProcessQueue().for_model(tiny_llama.name)  # the queue the worker consumes
    worker = Worker(
        api_settings(model=tiny_llama.name, worker_id="w-logs"), tiny_llama, factory, queue, poll_seconds=0.1
    )
    jobs = {
        add_job(factory, "generate", {"prompt": "Hi", "max_new_tokens": 2}, model=tiny_llama.name): "succeeded",
        add_job(factory, "generate", {"prompt": ""}, model=tiny_llama.name): "failed",
    }
    with caplog.at_level(logging.INFO, logger="creme.jobs"):
        worker.start()
        try:
            for job_id in jobs:
                queue.enqueue(job_id)
            for job_id in jobs:
                finished_job(factory, job_id, 60)
        finally:
            worker.stop()
            queue.close()
    events = _events(caplog, "creme.jobs")
    assert {e["job_id"]: e["status"] for e in events} == jobs
    assert all(e["kind"] == "generate" and e["worker"] == "w-logs" and e["message"].startswith("job ") for e in events)
    assert all(isinstance(e["seconds"], float) and 0 <= e["seconds"] < 60 for e in events)


@pytest.fixture
def gateway_log(tmp_path: Path, redis_url: str) -> Iterator[tuple[httpx.Client, Path]]:
    """``creme serve`` as a gateway (no model) with ``CREME_LOG_FORMAT=json``, and where its stderr goes."""
    url = f"sqlite:///{tmp_path / 'creme.db'}"
    upgrade(url)
    port = free_port()
    env = creme_env(CREME_DATABASE_URL=url, CREME_REDIS_URL=redis_url, CREME_PORT=str(port), CREME_LOG_FORMAT="json")
    log = tmp_path / "serve.log"
    with creme_process(["serve"], env, log), httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        wait_for("the gateway", lambda: client.get("/healthz").status_code == 200, timeout=120, logs=[log])
        yield client, log


@pytest.mark.redis
def test_serve_writes_json_request_lines(gateway_log: tuple[httpx.Client, Path]) -> None:
    client, log = gateway_log
    response = client.get("/v1/jobs", params={"limit": "2"})
    assert response.status_code == 200

    def logged() -> dict | None:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return next((e for e in lines if e.get("request_id") == response.headers["x-request-id"]), None)

    line = wait_for("the request's log line", logged, timeout=10, logs=[log])
    assert line["logger"] == "creme.requests" and line["level"] == "INFO"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/jobs", 200)  # no query string
    assert isinstance(line["seconds"], float) and line["time"].endswith("+00:00")
