"""Shared test configuration: offline model loading and the embedded-model cache."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.db", "tests.fixtures.redis"]
