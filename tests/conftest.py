"""Shared test configuration: offline model loading, and the fixtures in tests/fixtures for every suite."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads spin by default; with worker subprocesses beside the tests that starves the cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.redis",
    "tests.fixtures.app",
    "tests.fixtures.models",
    "tests.fixtures.cli",
]
