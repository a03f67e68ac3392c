"""Fixtures for the API tests: the app over a real database (SQLite and Postgres) and a queue.

``queue``, ``app`` and ``client`` come from tests/fixtures/app.py; these are the API tests' limits,
and ``embedded``: the app with an in-process worker on a tiny model, as ``creme serve`` runs them.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.engine.loading import LoadedModel
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.fixtures.app import api_settings
from workers import Worker


@pytest.fixture
def settings() -> Settings:
    return api_settings(max_wait_seconds=3.0, worker_lease_seconds=30.0)


@pytest.fixture
def embedded(factory: sessionmaker[Session], tiny_llama: LoadedModel) -> Iterator[tuple[TestClient, Worker]]:
    """The app and an in-process worker on a tiny model, as ``creme serve`` runs them; heartbeats once an hour."""
    settings = api_settings(
        model=tiny_llama.name, worker_id="embedded", heartbeat_seconds=3600.0, worker_lease_seconds=600.0
    )
    queue = InProcessQueue()
    worker = Worker(settings, tiny_llama, factory, queue, poll_seconds=0.1)
    worker.start()
    try:
        assert worker.ready.wait(60), "the worker did not become ready"
        app = create_app(
            settings, session_factory=factory, queue=queue, n_layers=tiny_llama.n_layers, tokenizer=tiny_llama.tokenizer
        )
        with TestClient(app) as client:
            yield client, worker
    finally:
        worker.stop()
        worker.weights.set_active([])  # the session's tiny model back to pristine
        queue.close()
