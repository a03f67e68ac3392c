"""Job claims and the sweep on real databases (SQLite and Postgres) and a real Redis stream."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import update

from service.db import Edit, Job, utcnow
from service.jobs import InProcessQueue
from service.jobs.redis_queue import RedisQueue
from service.problems import CANCELLED, PROBLEM_BASE, cancelled_problem
from service.usecases.jobs import cancel_job
from tests.workers.support import TEST_MODEL, Factory, add_edit, add_job, get
from workers.claims import claim, extend_lease, finish, is_cancel_requested, release, report_progress, sweep

LEASE = 30.0
CANCELLED_TYPE = PROBLEM_BASE + CANCELLED
MODEL = SimpleNamespace(name=TEST_MODEL, fingerprint="f" * 32)  # all add_edit needs of a model


def _expire(factory: Factory, job_id: str, **values: object) -> None:
    with factory() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1), **values)
        )
        session.commit()


def test_claim_is_exclusive_under_threads(factory: Factory) -> None:
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    n = 8
    barrier = threading.Barrier(n)
    won: list[str] = []

    def contend(worker: str) -> None:
        barrier.wait()
        with factory() as session:
            if claim(session, job_id, worker, LEASE) is not None:
                won.append(worker)

    threads = [threading.Thread(target=contend, args=(f"w{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    job = get(factory, Job, job_id)
    assert (job.status, job.claimed_by, job.attempts) == ("running", won[0], 1)
    assert job.lease_expires_at > utcnow() and job.started_at is not None


def test_claim_refuses_live_lease_and_terminal_takes_expired(factory: Factory) -> None:
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    with factory() as session:
        assert claim(session, job_id, "a", LEASE) is not None
        assert claim(session, job_id, "b", LEASE) is None  # live lease
    _expire(factory, job_id)
    with factory() as session:
        job = claim(session, job_id, "b", LEASE)
        assert job is not None and job.claimed_by == "b" and job.attempts == 2
        assert finish(session, job_id, "b", status="succeeded", result={"text": "x"})
        assert claim(session, job_id, "c", LEASE) is None  # terminal
        assert claim(session, "no-such-job", "c", LEASE) is None


def test_claim_stops_at_max_attempts(factory: Factory) -> None:
    job_id = add_job(factory, "generate", {"prompt": "Hi"}, attempts=3, max_attempts=3)
    with factory() as session:
        assert claim(session, job_id, "a", LEASE) is None
    assert get(factory, Job, job_id).status == "queued"  # the sweep fails it


def test_claim_cancels_a_queued_job_with_cancel_requested(factory: Factory) -> None:
    edit_id = add_edit(factory, MODEL)  # type: ignore[arg-type]
    job_id = add_job(factory, "edit", {"edit_id": edit_id}, cancel_requested=True)
    with factory() as session:
        assert claim(session, job_id, "a", LEASE) is None
    job = get(factory, Job, job_id)
    assert job.status == "cancelled" and job.attempts == 0 and job.finished_at is not None
    assert job.error["type"] == CANCELLED_TYPE and job.progress["message"] == "cancelled"
    edit = get(factory, Edit, edit_id)
    assert edit.status == "failed" and edit.error == job.error


def test_progress_lease_and_finish_need_the_claim(factory: Factory) -> None:
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    with factory() as session:
        claimed = claim(session, job_id, "a", 1.0)
        assert claimed is not None
        first_lease = claimed.lease_expires_at
        assert report_progress(session, job_id, "a", 1, 3, "step one")
        assert not report_progress(session, job_id, "b", 2, 3, "not mine")
        assert extend_lease(session, job_id, "a", LEASE)
        assert not extend_lease(session, job_id, "b", LEASE)
        assert not is_cancel_requested(session, job_id)
        assert not finish(session, job_id, "b", status="succeeded", result={})
        with pytest.raises(ValueError):
            finish(session, job_id, "a", status="running")
        assert finish(session, job_id, "a", status="failed", error={"title": "boom"})
        assert not finish(session, job_id, "a", status="succeeded", result={})
        assert not report_progress(session, job_id, "a", 3, 3, "too late")
    job = get(factory, Job, job_id)
    assert job.lease_expires_at is None and job.status == "failed" and job.error == {"title": "boom"}
    assert job.progress == {"step": 1, "total": 3, "message": "failed: boom"}
    assert first_lease is not None


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        ("succeeded", None, "done"),
        (
            "failed",
            {"title": "job failed", "detail": "RuntimeError: out of memory"},
            "failed: RuntimeError: out of memory",
        ),
        ("failed", {"title": "job failed", "detail": "x" * 500}, "failed: " + "x" * 199 + "…"),
        ("cancelled", None, "cancelled"),
    ],
)
def test_a_finished_job_s_progress_says_how_it_ended(
    factory: Factory, status: str, error: dict[str, str] | None, message: str
) -> None:
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    with factory() as session:
        assert claim(session, job_id, "a", LEASE) is not None
        assert report_progress(session, job_id, "a", 2, 4, "decoding")
        assert finish(session, job_id, "a", status=status, error=error)
    assert get(factory, Job, job_id).progress == {"step": 2, "total": 4, "message": message}


def test_every_way_of_cancelling_an_edit_records_the_one_cancelled_problem(factory: Factory) -> None:
    """Cancelled by the API while queued, at claim, by its worker, or by the sweep (queued or running)."""
    queue = InProcessQueue()
    jobs = {}
    for way in ("api", "claim", "worker", "sweep-queued", "sweep-running"):
        edit_id = add_edit(factory, MODEL)  # type: ignore[arg-type]
        jobs[way] = (add_job(factory, "edit", {"edit_id": edit_id}, age=60), edit_id)
        with factory() as session:  # the edit names its job, as submit_edit leaves it
            session.execute(update(Edit).where(Edit.id == edit_id).values(job_id=jobs[way][0]))
            session.commit()
    with factory() as session:
        assert cancel_job(session, jobs["api"][0]).status == "cancelled"
        for way in ("worker", "sweep-running"):
            assert claim(session, jobs[way][0], "a", LEASE) is not None
        assert finish(session, jobs["worker"][0], "a", status="cancelled", error=cancelled_problem("on request"))
    for way in ("claim", "sweep-queued", "sweep-running"):
        with factory() as session:
            session.execute(update(Job).where(Job.id == jobs[way][0]).values(cancel_requested=True))
            session.commit()
    _expire(factory, jobs["sweep-running"][0])
    with factory() as session:
        assert claim(session, jobs["claim"][0], "a", LEASE) is None
        assert sorted(sweep(session, queue, base_model=TEST_MODEL).cancelled) == sorted(
            jobs[w][0] for w in ("sweep-queued", "sweep-running")
        )
    for way, (job_id, edit_id) in jobs.items():
        job, edit = get(factory, Job, job_id), get(factory, Edit, edit_id)
        outcome = (job.status, job.progress["message"], job.error["type"], edit.status, edit.error["type"])
        assert outcome == ("cancelled", "cancelled", CANCELLED_TYPE, "failed", CANCELLED_TYPE), way
    queue.close()


def test_release_gives_the_job_back_uncounted(factory: Factory) -> None:
    edit_id = add_edit(factory, MODEL, status="computing")  # type: ignore[arg-type]
    job_id = add_job(factory, "edit", {"edit_id": edit_id})
    with factory() as session:
        assert claim(session, job_id, "a", LEASE) is not None
        assert not release(session, job_id, "b")
        assert release(session, job_id, "a")
    job = get(factory, Job, job_id)
    assert (job.status, job.claimed_by, job.attempts) == ("queued", None, 0)
    assert get(factory, Edit, edit_id).status == "pending"


@pytest.mark.redis
def test_sweep_requeues_queued_jobs_the_queue_lost(
    factory: Factory, make_redis_queue: Callable[..., RedisQueue]
) -> None:
    queue = make_redis_queue()
    lost = add_job(factory, "generate", {"prompt": "Hi"}, age=60)
    fresh = add_job(factory, "generate", {"prompt": "Hi"})  # the gateway may be enqueueing it right now
    with factory() as session:
        report = sweep(session, queue, base_model=TEST_MODEL)
    assert report.requeued == [lost] and fresh not in report.requeued
    delivery = queue.receive("w", timeout=1)
    assert delivery is not None and delivery.job_id == lost
    assert queue.receive("w", timeout=0.1) is None
    with factory() as session:  # once per requeue interval, however many workers sweep
        assert sweep(session, queue, base_model=TEST_MODEL).requeued == []


@pytest.mark.redis
def test_sweep_leaves_jobs_the_queue_still_holds(factory: Factory, make_redis_queue: Callable[..., RedisQueue]) -> None:
    queue = make_redis_queue()
    job_id = add_job(factory, "generate", {"prompt": "Hi"}, age=60)
    queue.enqueue(job_id)
    with factory() as session:
        assert sweep(session, queue, base_model=TEST_MODEL).requeued == []
    assert queue.depth() == 1


@pytest.mark.redis
def test_sweep_retries_jobs_of_dead_workers(factory: Factory, make_redis_queue: Callable[..., RedisQueue]) -> None:
    queue = make_redis_queue()
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    with factory() as session:
        assert claim(session, job_id, "dead", LEASE) is not None
    _expire(factory, job_id)
    with factory() as session:
        report = sweep(session, queue, base_model=TEST_MODEL)
    assert report.retried == [job_id] and not report.failed
    job = get(factory, Job, job_id)
    assert (job.status, job.claimed_by, job.attempts) == ("queued", None, 1)
    assert "dead" in job.progress["message"]
    delivery = queue.receive("live", timeout=1)
    assert delivery is not None and delivery.job_id == job_id
    with factory() as session:
        again = claim(session, job_id, "live", LEASE)
    assert again is not None and again.attempts == 2


@pytest.mark.redis
def test_sweep_fails_jobs_past_max_attempts(factory: Factory, make_redis_queue: Callable[..., RedisQueue]) -> None:
    queue = make_redis_queue()
    edit_id = add_edit(factory, MODEL)  # type: ignore[arg-type]
    job_id = add_job(factory, "edit", {"edit_id": edit_id}, max_attempts=2)
    for _ in range(2):
        with factory() as session:
            assert claim(session, job_id, "dead", LEASE) is not None
        _expire(factory, job_id)
        with factory() as session:
            sweep(session, queue, base_model=TEST_MODEL)
    job = get(factory, Job, job_id)
    assert job.status == "failed" and job.attempts == 2
    assert job.error["title"] == "job abandoned"
    assert job.error["detail"] == "worker dead stopped heartbeating after 2 attempts"
    assert job.error["type"].endswith("job-abandoned") and job.error["status"] == 500
    assert job.progress["message"] == "failed: worker dead stopped heartbeating after 2 attempts"
    edit = get(factory, Edit, edit_id)
    assert edit.status == "failed" and edit.error["title"] == "job abandoned"


@pytest.mark.redis
def test_sweep_cancels_flagged_jobs_of_dead_workers(
    factory: Factory, make_redis_queue: Callable[..., RedisQueue]
) -> None:
    queue = make_redis_queue()
    job_id = add_job(factory, "generate", {"prompt": "Hi"})
    with factory() as session:
        assert claim(session, job_id, "dead", LEASE) is not None
    _expire(factory, job_id, cancel_requested=True)
    with factory() as session:
        assert sweep(session, queue, base_model=TEST_MODEL).cancelled == [job_id]
    assert get(factory, Job, job_id).status == "cancelled"
    assert queue.depth() == 0
