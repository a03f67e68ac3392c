"""Fixtures for the API tests: the app over a real database (SQLite and Postgres) and a queue.

``queue``, ``app`` and ``client`` come from tests/fixtures/app.py; these are the API tests' limits.
"""

from __future__ import annotations

import pytest

from service.settings import Settings
from tests.fixtures.app import api_settings


@pytest.fixture
def settings() -> Settings:
    return api_settings(max_wait_seconds=3.0, worker_lease_seconds=30.0)
