"""Fixtures for the API tests: the app over a real database (SQLite and Postgres) and a queue."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.api.support import BASE_MODEL

N_LAYERS = 30


@pytest.fixture
def settings() -> Settings:
    return Settings(
        model=BASE_MODEL,
        max_wait_seconds=3.0,
        max_queue_depth=50,
        max_prompt_chars=200,
        max_eval_queries=4,
        max_body_bytes=20_000,
        worker_lease_seconds=30.0,
    )


@pytest.fixture
def queue() -> Iterator[InProcessQueue]:
    q = InProcessQueue()
    yield q
    q.close()


@pytest.fixture
def app(settings: Settings, factory: sessionmaker[Session], queue: InProcessQueue) -> FastAPI:
    return create_app(settings, session_factory=factory, queue=queue, n_layers=N_LAYERS)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c
