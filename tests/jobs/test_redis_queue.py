"""What only the Redis adapter has to survive: lost groups, dead servers, several clients."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.jobs import QueueUnavailable
from service.jobs.redis_queue import RedisQueue
from tests.fixtures.redis import private_redis

MakeQueue = Callable[..., RedisQueue]


@pytest.fixture
def listening_socket() -> Iterator[socket.socket]:
    """A server socket that accepts connections (via the backlog) and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    yield server
    server.close()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.redis
def test_survives_losing_stream_and_group(make_redis_queue: MakeQueue, redis_client: redis.Redis) -> None:
    queue = make_redis_queue()
    queue.enqueue("before")
    delivery = queue.receive("w", timeout=1)
    assert delivery is not None and delivery.job_id == "before"
    redis_client.delete(queue.stream)  # what FLUSHALL or a restart without persistence does to us
    queue.ack(delivery)  # acking into the void is harmless
    assert queue.depth() == 0
    assert queue.reclaim("w2", idle_seconds=0) == []
    queue.enqueue("after")
    again = queue.receive("w", timeout=1)
    assert again is not None and again.job_id == "after"
    queue.ack(again)
    assert queue.depth() == 0


@pytest.mark.redis
def test_receive_recreates_a_destroyed_group_and_keeps_queued_ids(
    make_redis_queue: MakeQueue, redis_client: redis.Redis
) -> None:
    queue = make_redis_queue()
    queue.enqueue("one")
    assert queue.receive("w", timeout=1) is not None  # creates the group
    queue.enqueue("two")
    redis_client.xgroup_destroy(queue.stream, queue.group)
    ids = []
    while (delivery := queue.receive("w", timeout=0.2)) is not None:
        queue.ack(delivery)
        ids.append(delivery.job_id)
    assert ids == ["one", "two"]  # at least once: the unacked "one" comes back too


@pytest.mark.redis
def test_ids_enqueued_before_any_consumer_are_delivered(make_redis_queue: MakeQueue) -> None:
    producer, consumer = make_redis_queue(), make_redis_queue()
    producer.enqueue("early")
    delivery = consumer.receive("w", timeout=1)
    assert delivery is not None and delivery.job_id == "early"


@pytest.mark.redis
def test_survives_flushall(tmp_path: Path) -> None:
    with private_redis(tmp_path) as server:  # FLUSHALL would wipe the shared test server
        queue = RedisQueue(server.url)
        try:
            queue.enqueue("before")
            assert queue.receive("w", timeout=1) is not None
            server.flushall()
            queue.enqueue("after")
            delivery = queue.receive("w", timeout=1)
            assert delivery is not None and delivery.job_id == "after"
        finally:
            queue.close()


@pytest.mark.redis
def test_separate_clients_share_jobs_and_nudges(make_redis_queue: MakeQueue) -> None:
    gateway, worker_a, worker_b = make_redis_queue(), make_redis_queue(), make_redis_queue()
    subscriptions = [worker_a.nudges("a"), worker_b.nudges("b")]
    gateway.enqueue("j1")
    gateway.enqueue("j2")
    gateway.publish_nudge("state:2")
    first, second = worker_a.receive("a", timeout=1), worker_b.receive("b", timeout=1)
    assert first is not None and second is not None
    assert {first.job_id, second.job_id} == {"j1", "j2"}
    assert [s.get(timeout=2) for s in subscriptions] == ["state:2", "state:2"]
    time.sleep(0.15)
    reclaimed = worker_b.reclaim("b", idle_seconds=0.1)  # worker a "died"
    assert [(d.job_id, d.times_delivered) for d in reclaimed] == [(first.job_id, 2)]
    worker_b.ack(reclaimed[0])
    worker_b.ack(second)
    assert gateway.depth() == 0


@pytest.mark.redis
def test_receive_may_wait_longer_than_the_socket_timeout(make_redis_queue: MakeQueue) -> None:
    queue = make_redis_queue(socket_timeout=0.5)
    start = time.monotonic()
    assert queue.receive("w", timeout=1.2) is None
    assert 1.15 <= time.monotonic() - start < 3.0
    queue.enqueue("j")
    delivery = queue.receive("w", timeout=0.8)
    assert delivery is not None and delivery.job_id == "j"


@pytest.mark.redis
def test_redis_errors_become_queue_unavailable(make_redis_queue: MakeQueue, redis_client: redis.Redis) -> None:
    queue = make_redis_queue()
    redis_client.set(queue.stream, "not a stream")
    with pytest.raises(QueueUnavailable, match="WRONGTYPE"):
        queue.enqueue("j")
    with pytest.raises(QueueUnavailable):
        queue.receive("w", timeout=0)


def test_closed_port_fails_fast() -> None:
    queue = RedisQueue(f"redis://127.0.0.1:{_closed_port()}/0", connect_timeout=0.5)
    start = time.monotonic()
    with pytest.raises(QueueUnavailable) as caught:
        queue.enqueue("j")
    assert time.monotonic() - start < 2.0
    assert isinstance(caught.value.__cause__, redis.ConnectionError)
    for call in (lambda: queue.receive("w", timeout=5), queue.depth, lambda: queue.nudges("w")):
        with pytest.raises(QueueUnavailable):
            call()
    start = time.monotonic()
    assert queue.healthy() is False
    assert time.monotonic() - start < 2.0
    queue.close()


def test_hung_server_fails_within_the_socket_timeout(listening_socket: socket.socket) -> None:
    port = listening_socket.getsockname()[1]
    queue = RedisQueue(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3, health_timeout=0.3)
    start = time.monotonic()
    with pytest.raises(QueueUnavailable):
        queue.enqueue("j")
    assert time.monotonic() - start < 2.0
    start = time.monotonic()
    assert queue.healthy() is False
    assert time.monotonic() - start < 2.0
    queue.close()
