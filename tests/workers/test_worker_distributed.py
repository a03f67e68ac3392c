"""Several workers on one Redis stream and one database (SQLite and Postgres), on tiny models:
they share the work, recover a dead worker's job, converge on every edit, and stop gracefully."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.db import Edit, Job, Worker, get_state, utcnow
from service.engine.loading import LoadedModel
from service.jobs import InProcessQueue
from service.jobs.queue import Delivery, QueueUnavailable
from service.jobs.redis_queue import RedisQueue
from service.problems import CANCELLED, PROBLEM_BASE
from service.settings import Settings
from tests.support import wait_for
from tests.workers.support import Factory, Pair, add_edit, add_job, finished_job, get
from workers import Worker as WorkerProcess
from workers.claims import claim


def _settings(worker_id: str, **overrides: float) -> Settings:
    values = {"heartbeat_seconds": 0.2, "worker_lease_seconds": 2.0, "reconcile_seconds": 30.0, **overrides}
    return Settings(worker_id=worker_id, **values)  # type: ignore[arg-type]


@pytest.mark.redis
def test_two_workers_share_jobs_recover_a_dead_one_and_converge(
    factory: Factory, pair: Pair, make_redis_queue: Callable[..., RedisQueue]
) -> None:
    # A job a dead worker held: its lease ran out and it has attempts left.
    model = pair[0].name
    ghost = add_job(factory, "score", {"prompt": "Hi", "answers": ["there"]}, model=model)
    with factory() as session:
        assert claim(session, ghost, "ghost", 60.0) is not None
        session.execute(update(Job).where(Job.id == ghost).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()

    workers = [
        WorkerProcess(_settings(name), lm, factory, make_redis_queue(), poll_seconds=0.2, sweep_seconds=0.5)
        for name, lm in zip(("w-a", "w-b"), pair, strict=True)
    ]
    gateway = make_redis_queue().for_model(model)  # the model's stream, which its workers consume
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            assert worker.ready.wait(30)

        assert finished_job(factory, ghost, 30).status == "succeeded"
        assert get(factory, Job, ghost).attempts == 2

        jobs = [
            add_job(factory, "generate", {"prompt": f"Count {i}", "max_new_tokens": 2}, model=model) for i in range(6)
        ]
        for job_id in jobs:
            gateway.enqueue(job_id)
        done = [finished_job(factory, job_id, 30) for job_id in jobs]
        assert all(job.status == "succeeded" for job in done)

        edit_id = add_edit(factory, pair[0], layers=[1, 2], apply_policy="always", base_fingerprint="")
        job_id = add_job(factory, "edit", {"edit_id": edit_id})
        gateway.enqueue(job_id)
        job = finished_job(factory, job_id, 60)
        assert job.status == "succeeded", job.error
        assert get(factory, Edit, edit_id).status == "applied"

        # The worker that did not run the edit follows the nudge (its reconcile timer is 30 s).
        wait_for(
            "both workers to converge",
            lambda: all(w.weights.active_ids == [edit_id] for w in workers),
            10,
            interval=0.05,
        )
        assert workers[0].weights.checksum() == workers[1].weights.checksum()

        def heartbeats_agree() -> bool:
            rows = [get(factory, Worker, w.worker_id) for w in workers]
            return {(r.state_version, r.weights_checksum) for r in rows} == {(1, workers[0].reconciler.checksum)}

        wait_for("both heartbeats to report the same state", heartbeats_agree, 10, interval=0.05)
    finally:
        for worker in workers:
            worker.stop()
            worker.weights.set_active([])
    assert {get(factory, Worker, w.worker_id).status for w in workers} == {"stopped"}


def _edit_delivery(factory: Factory, lm: LoadedModel, **job_columns: object) -> tuple[str, str, Delivery]:
    edit_id = add_edit(factory, lm, layers=[1, 2, 3], apply_policy="never", base_fingerprint="")
    job_id = add_job(factory, "edit", {"edit_id": edit_id}, **job_columns)
    return edit_id, job_id, Delivery(job_id=job_id, delivery_id="d1", times_delivered=1)


def test_stopping_mid_edit_releases_the_job(factory: Factory, pair: Pair) -> None:
    queue = InProcessQueue()
    worker = WorkerProcess(_settings("w-stop"), pair[0], factory, queue)
    edit_id, job_id, delivery = _edit_delivery(factory, pair[0])
    worker.request_stop()  # SIGTERM arrived: the edit stops at its first layer
    worker._handle(delivery)
    job = get(factory, Job, job_id)
    assert (job.status, job.claimed_by, job.attempts) == ("queued", None, 0)
    assert get(factory, Edit, edit_id).status == "pending"
    redelivered = queue.for_model(pair[0].name).receive("other", timeout=1)  # handed back for another worker
    assert redelivered is not None and redelivered.job_id == job_id
    queue.close()


def test_cancelling_a_running_edit(factory: Factory, pair: Pair) -> None:
    queue = InProcessQueue()
    worker = WorkerProcess(_settings("w-cancel"), pair[0], factory, queue)
    edit_id, job_id, _ = _edit_delivery(factory, pair[0])
    with factory() as session:
        job = claim(session, job_id, "w-cancel", 30.0)
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))  # the API's flag
        session.commit()
    assert job is not None
    worker._run(job)
    job = get(factory, Job, job_id)
    assert job.status == "cancelled" and job.error["type"] == PROBLEM_BASE + CANCELLED
    assert job.progress["message"] == "cancelled"
    edit = get(factory, Edit, edit_id)
    assert edit.status == "failed" and edit.error == job.error
    with factory() as session:
        assert get_state(session, pair[0].name).version == 0
    queue.close()


class _FlakyQueue(InProcessQueue):
    """Fails the first two receives and the first ack, as a Redis blip would."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = {"receive": 2, "ack": 1}

    def _fail(self, op: str) -> None:
        if self.failures[op] > 0:
            self.failures[op] -= 1
            raise QueueUnavailable(f"{op} failed (test)")

    def for_model(self, model: str) -> _FlakyQueue:
        return self  # the one model's queue: the worker takes its failures

    def receive(self, consumer: str, timeout: float) -> Delivery | None:
        self._fail("receive")
        return super().receive(consumer, timeout)

    def ack(self, delivery: Delivery) -> None:
        self._fail("ack")
        super().ack(delivery)


def test_queue_outages_are_survived(factory: Factory, pair: Pair) -> None:
    queue = _FlakyQueue()
    worker = WorkerProcess(_settings("w-flaky"), pair[0], factory, queue, poll_seconds=0.1)
    worker.start()
    try:
        job_id = add_job(factory, "generate", {"prompt": "Hi", "max_new_tokens": 2}, model=pair[0].name)
        queue.enqueue(job_id)
        assert finished_job(factory, job_id, 30).status == "succeeded"
        wait_for("the failed ack to be retried", lambda: queue.depth() == 0, 10, interval=0.05)
        assert queue.failures == {"receive": 0, "ack": 0}
    finally:
        worker.stop()


def test_database_outages_are_survived(factory: Factory, pair: Pair) -> None:
    down = threading.Event()

    def flaky_factory() -> Session:
        if down.is_set():
            raise OperationalError("connect", None, ConnectionRefusedError("database down (test)"))
        return factory()

    queue = InProcessQueue().for_model(pair[0].name)
    worker = WorkerProcess(_settings("w-dbdown"), pair[0], flaky_factory, queue, poll_seconds=0.1)  # type: ignore[arg-type]
    worker.start()
    try:
        assert worker.ready.wait(30)
        job_id = add_job(factory, "generate", {"prompt": "Hi", "max_new_tokens": 2}, model=pair[0].name)
        down.set()
        queue.enqueue(job_id)
        time.sleep(1.5)
        assert worker._thread is not None and worker._thread.is_alive()
        down.clear()
        assert finished_job(factory, job_id, 30).status == "succeeded"
    finally:
        worker.stop()
