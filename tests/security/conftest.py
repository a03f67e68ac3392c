"""Fixtures for the security tests: the app over a real database (SQLite and Postgres), and keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api import create_app
from service.jobs import InProcessQueue
from service.keys import create_key
from service.settings import Settings
from tests.api.support import BASE_MODEL
from tests.security.support import MakeKey

N_LAYERS = 30


@pytest.fixture
def settings() -> Settings:
    return Settings(
        model=BASE_MODEL,
        max_wait_seconds=0.5,
        max_queue_depth=50,
        max_prompt_chars=200,
        max_eval_queries=4,
        max_body_bytes=20_000,
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


@pytest.fixture
def make_key(factory: sessionmaker[Session]) -> MakeKey:
    """``make_key("read", "edit", name=...)``: store a key with those scopes, return its plaintext."""

    def make(*scopes: str, name: str = "test") -> str:
        with factory() as session:
            _, token = create_key(session, name, scopes)
        return token

    return make
