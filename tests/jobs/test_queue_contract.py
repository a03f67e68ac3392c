"""The JobQueue contract, run against every adapter (see the `queue` fixture)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from service.jobs import (
    Delivery,
    InProcessQueue,
    JobQueue,
    NudgeSubscription,
    QueueUnavailable,
    make_queue,
)


def _drain(queue: JobQueue, consumer: str = "c") -> list[str]:
    ids = []
    while (delivery := queue.receive(consumer, timeout=0)) is not None:
        queue.ack(delivery)
        ids.append(delivery.job_id)
    return ids


def test_adapter_satisfies_the_protocols(queue: JobQueue) -> None:
    assert isinstance(queue, JobQueue)
    subscription = queue.nudges("c")
    assert isinstance(subscription, NudgeSubscription)
    subscription.close()
    assert queue.healthy()


def test_receive_is_fifo_and_acks_empty_the_queue(queue: JobQueue) -> None:
    for job_id in ("a", "b", "c"):
        queue.enqueue(job_id)
    deliveries = [queue.receive("w1", timeout=1) for _ in range(3)]
    assert [d.job_id for d in deliveries if d] == ["a", "b", "c"]
    assert all(d is not None and d.times_delivered == 1 for d in deliveries)
    assert len({d.delivery_id for d in deliveries if d}) == 3
    assert queue.depth() == 3  # delivered but not acknowledged still counts
    for delivery in deliveries:
        assert delivery is not None
        queue.ack(delivery)
    assert queue.depth() == 0
    assert queue.receive("w1", timeout=0) is None


def test_depth_counts_queued_and_pending(queue: JobQueue) -> None:
    assert queue.depth() == 0
    queue.enqueue("a")
    queue.enqueue("b")
    assert queue.depth() == 2
    first = queue.receive("w", timeout=1)
    assert first is not None
    assert queue.depth() == 2
    queue.ack(first)
    assert queue.depth() == 1
    queue.ack(first)  # a second ack is harmless
    assert queue.depth() == 1
    assert _drain(queue) == ["b"]
    assert queue.depth() == 0


def test_receive_times_out_with_none(queue: JobQueue) -> None:
    start = time.monotonic()
    assert queue.receive("w", timeout=0) is None
    assert time.monotonic() - start < 0.5
    start = time.monotonic()
    assert queue.receive("w", timeout=0.3) is None
    assert 0.25 <= time.monotonic() - start < 2.0


def test_blocked_receive_wakes_on_enqueue(queue: JobQueue) -> None:
    got: list[Delivery | None] = []
    receiver = threading.Thread(target=lambda: got.append(queue.receive("w", timeout=5)))
    receiver.start()
    time.sleep(0.1)
    start = time.monotonic()
    queue.enqueue("late")
    receiver.join(timeout=5)
    assert time.monotonic() - start < 2.0
    assert got and got[0] is not None and got[0].job_id == "late"


def test_reclaim_moves_idle_deliveries_to_another_consumer(queue: JobQueue) -> None:
    queue.enqueue("j")
    original = queue.receive("dead", timeout=1)
    assert original is not None
    assert queue.reclaim("alive", idle_seconds=10) == []  # not idle long enough
    time.sleep(0.2)
    assert queue.reclaim("dead", idle_seconds=0.1) == []  # never one's own deliveries
    reclaimed = queue.reclaim("alive", idle_seconds=0.1)
    assert reclaimed == [Delivery(job_id="j", delivery_id=original.delivery_id, times_delivered=2)]
    assert queue.reclaim("third", idle_seconds=0.1) == []  # the claim reset the idle time
    assert queue.depth() == 1
    time.sleep(0.2)
    assert [d.times_delivered for d in queue.reclaim("third", idle_seconds=0.1)] == [3]
    queue.ack(original)  # acking any copy of the delivery settles it
    assert queue.depth() == 0
    assert queue.reclaim("alive", idle_seconds=0) == []


def test_reclaim_leaves_queued_entries_alone(queue: JobQueue) -> None:
    queue.enqueue("x")
    time.sleep(0.05)
    assert queue.reclaim("other", idle_seconds=0) == []
    assert _drain(queue) == ["x"]


def test_nudges_reach_every_open_subscription(queue: JobQueue) -> None:
    first, second, closed = queue.nudges("w1"), queue.nudges("w2"), queue.nudges("w3")
    closed.close()
    closed.close()
    queue.publish_nudge("state:7")
    queue.publish_nudge("state:8")
    for subscription in (first, second):
        assert subscription.get(timeout=2) == "state:7"
        assert subscription.get(timeout=2) == "state:8"
        assert subscription.get(timeout=0.05) is None
    assert closed.get(timeout=0.05) is None
    first.close()
    second.close()


def test_concurrent_producers_and_consumers_lose_nothing(queue: JobQueue) -> None:
    producers, per_producer, consumers = 4, 50, 4
    expected = {f"p{p}-{i}" for p in range(producers) for i in range(per_producer)}
    received: list[str] = []
    lock = threading.Lock()
    done = threading.Event()

    def produce(p: int) -> None:
        for i in range(per_producer):
            queue.enqueue(f"p{p}-{i}")

    def consume(name: str) -> None:
        while not done.is_set():
            delivery = queue.receive(name, timeout=0.1)
            if delivery is None:
                continue
            queue.ack(delivery)
            with lock:
                received.append(delivery.job_id)
                if len(received) >= len(expected):
                    done.set()

    threads = [threading.Thread(target=consume, args=(f"c{c}",)) for c in range(consumers)]
    threads += [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
    for thread in threads:
        thread.start()
    assert done.wait(timeout=10), f"only {len(received)} of {len(expected)} received"
    for thread in threads:
        thread.join(timeout=5)
    assert sorted(received) == sorted(expected)  # each id exactly once
    assert queue.depth() == 0


def test_closed_queue_is_unavailable(queue: JobQueue) -> None:
    queue.close()
    queue.close()  # idempotent
    assert queue.healthy() is False
    with pytest.raises(QueueUnavailable):
        queue.enqueue("a")
    with pytest.raises(QueueUnavailable):
        queue.receive("w", timeout=0)
    with pytest.raises(QueueUnavailable):
        queue.depth()
    with pytest.raises(QueueUnavailable):
        queue.nudges("w")


def test_queue_unavailable_is_a_runtime_error() -> None:
    assert issubclass(QueueUnavailable, RuntimeError)


def test_delivery_is_frozen() -> None:
    delivery = Delivery(job_id="j", delivery_id="1", times_delivered=1)
    with pytest.raises(AttributeError):
        delivery.job_id = "other"  # type: ignore[misc]


def test_make_queue_picks_the_adapter() -> None:
    from service.jobs.redis_queue import RedisQueue

    assert isinstance(make_queue(None), InProcessQueue)
    assert isinstance(make_queue(""), InProcessQueue)
    redis_queue = make_queue("redis://127.0.0.1:1/0", stream="s")  # connects lazily
    assert isinstance(redis_queue, RedisQueue)
    redis_queue.close()
    with pytest.raises(TypeError):
        make_queue(None, stream="s")


def test_importing_the_port_does_not_import_redis() -> None:
    code = "import sys, service.jobs; assert 'redis' not in sys.modules; service.jobs.RedisQueue"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_close_wakes_a_blocked_in_process_receiver() -> None:
    queue = InProcessQueue()
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            queue.receive("w", timeout=10)
        except QueueUnavailable as exc:
            errors.append(exc)

    receiver = threading.Thread(target=receive)
    receiver.start()
    time.sleep(0.05)
    subscription = queue.nudges("w")
    queue.close()
    receiver.join(timeout=2)
    assert not receiver.is_alive() and len(errors) == 1
    assert subscription.get(timeout=5) is None
