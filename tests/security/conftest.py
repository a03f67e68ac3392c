"""Fixtures for the security tests: the app over a real database (SQLite and Postgres), and keys.

``queue``, ``app`` and ``client`` come from tests/fixtures/app.py; these are the security tests' limits.
"""

from __future__ import annotations

import pytest
from sqlalchemy.orm import Session, sessionmaker

from service.keys import create_key
from service.settings import Settings
from tests.fixtures.app import api_settings
from tests.security.support import MakeKey


@pytest.fixture
def settings() -> Settings:
    return api_settings(max_wait_seconds=0.5)


@pytest.fixture
def make_key(factory: sessionmaker[Session]) -> MakeKey:
    """``make_key("read", "edit", name=...)``: store a key with those scopes, return its plaintext."""

    def make(*scopes: str, name: str = "test") -> str:
        with factory() as session:
            _, token = create_key(session, name, scopes)
        return token

    return make
