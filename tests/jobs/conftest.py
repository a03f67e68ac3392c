"""Fixtures for the queue tests: each adapter behind the same `queue` fixture.

Redis tests use the server at CREME_TEST_REDIS_URL (default redis://127.0.0.1:6379/0), a fresh
stream and channel per test, and delete their keys afterwards. If the server is unreachable they
are skipped, or fail when CI=true.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from service.jobs import InProcessQueue, JobQueue
from service.jobs.redis_queue import RedisQueue


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client for inspecting and breaking the server behind a queue's back."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def make_redis_queue(redis_url: str, redis_client: redis.Redis) -> Iterator[Callable[..., RedisQueue]]:
    """Build RedisQueues on one fresh stream/channel; every call gives another client on them."""
    prefix = f"creme-test:{uuid.uuid4().hex}"
    made: list[RedisQueue] = []

    def make(**options: Any) -> RedisQueue:
        queue = RedisQueue(
            redis_url, stream=f"{prefix}:jobs", group="workers", nudge_channel=f"{prefix}:nudge", **options
        )
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()
    redis_client.delete(f"{prefix}:jobs")


@pytest.fixture(params=["inprocess", pytest.param("redis", marks=pytest.mark.redis)])
def queue(request: pytest.FixtureRequest) -> Iterator[JobQueue]:
    """Each adapter in turn, for the contract tests."""
    if request.param == "inprocess":
        q: JobQueue = InProcessQueue()
    else:
        q = request.getfixturevalue("make_redis_queue")()
    yield q
    q.close()
