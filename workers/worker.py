"""The worker: reconcile the weights, consume jobs, heartbeat, report progress.

The same class runs as a thread inside ``creme serve`` (in-process queue) and as the main loop of
``creme worker`` (Redis). Threads:

* the **model thread** (the one calling :meth:`Worker.run_forever`): sweeps its model's jobs, receives
  deliveries from its model's queue (:meth:`JobQueue.for_model`),
  claims rows, reconciles and runs jobs. Every touch of the weights — reconciles included —
  happens on it under :attr:`Worker.model_lock`, so weights never change under a running job;
* the **heartbeat** thread: updates the ``workers`` row (with the model's depth, by which the
  gateway bounds requested layers) and extends the running job's lease;
* the **nudge** thread: turns queue nudges into a reconcile request for the model thread.

Queue or database outages are logged and retried with backoff; the loop never dies of them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections import deque
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Job
from service.engine.creme import EditCancelled
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from service.jobs.queue import Delivery, JobQueue, NudgeSubscription, QueueUnavailable
from service.logs import configure_logging
from service.problems import cancelled_problem
from service.settings import Settings
from workers.claims import ClaimLost, claim, finish, is_cancel_requested, release, sweep
from workers.context import DATABASE_UNAVAILABLE, JobContext, problem_for
from workers.heartbeat import Heartbeat
from workers.reconcile import Reconciler
from workers.runner import log_job_end, run_job

log = logging.getLogger(__name__)


class _Backoff:
    """Exponential waits from ``first`` to ``cap`` seconds; :meth:`reset` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 10.0) -> None:
        self.first, self.cap, self._next = first, cap, first

    def next(self) -> float:
        wait, self._next = self._next, min(self.cap, self._next * 2)
        return wait

    def reset(self) -> None:
        self._next = self.first


class Worker:
    """One model, one job at a time; see the module docstring for the threads."""

    def __init__(
        self,
        settings: Settings,
        lm: LoadedModel,
        session_factory: sessionmaker[Session],
        queue: JobQueue,
        *,
        weights: WeightState | None = None,
        poll_seconds: float = 1.0,
        sweep_seconds: float | None = None,
    ) -> None:
        self.settings = settings
        self.lm = lm
        self.session_factory = session_factory
        self.queue = queue.for_model(lm.name)  # this model's jobs only; nudges reach every model's workers
        self.host = socket.gethostname()
        self.worker_id = settings.worker_id or f"{self.host}-{os.getpid()}"
        # A fresh queue consumer per incarnation, so a restarted worker can reclaim what it left pending.
        self.consumer = f"{self.worker_id}:{uuid.uuid4().hex[:8]}"
        self.weights = weights or WeightState(lm)
        self.reconciler = Reconciler(
            lm, self.weights, session_factory, worker_id=self.worker_id, on_change=self._beat, queue=self.queue
        )
        self.heartbeat = Heartbeat(
            session_factory,
            self.reconciler,
            worker_id=self.worker_id,
            host=self.host,
            lease_seconds=settings.worker_lease_seconds,
        )
        self.model_lock = threading.RLock()
        self.poll_seconds = poll_seconds
        self.sweep_seconds = sweep_seconds or max(1.0, min(settings.worker_lease_seconds / 2, 15.0))
        self.ctx = JobContext(
            lm=lm,
            weights=self.weights,
            session_factory=session_factory,
            queue=self.queue,
            worker_id=self.worker_id,
            settings=settings,
            reconciler=self.reconciler,
            should_stop=self._should_stop,
        )
        self._stop = threading.Event()
        self._reconcile_wanted = threading.Event()
        self._claim_lost = threading.Event()
        self._current: str | None = None
        self._reclaimed: deque[Delivery] = deque()  # deliveries to handle before receiving new ones
        self._unacked: deque[Delivery] = deque()  # acks that failed, retried each loop
        self._beat_lock = threading.Lock()  # one heartbeat at a time, so an older state never lands last
        self._last_reconcile = 0.0
        self._next_sweep = 0.0
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []
        self.ready = threading.Event()  # set once registered and reconciled

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run :meth:`run_forever` on a daemon thread (the model thread)."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(target=self.run_forever, name=f"creme-worker-{self.worker_id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the worker to stop; safe from signal handlers. A running edit stops at its next layer."""
        self._stop.set()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop and wait for the model thread started by :meth:`start`."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def status(self) -> str:
        """What the heartbeat reports: starting, idle, busy, degraded (serving less than desired), stopping."""
        if self._stop.is_set():
            return "stopping"
        if not self.ready.is_set():
            return "starting"
        if self._current is not None:
            return "busy"
        return "degraded" if self.reconciler.degraded else "idle"

    def run_forever(self) -> None:
        """Register, reconcile, then consume jobs until :meth:`request_stop`."""
        log.info("worker %s starting for %s", self.worker_id, self.lm.name)
        try:
            if not self._register():
                return
            for target, name in ((self._heartbeat_loop, "heartbeat"), (self._nudge_loop, "nudges")):
                thread = threading.Thread(target=target, name=f"creme-{name}-{self.worker_id}", daemon=True)
                thread.start()
                self._helpers.append(thread)
            self._loop()
        finally:
            self._stop.set()
            for thread in self._helpers:
                thread.join(timeout=10.0)
            self._beat(status="stopped")
            log.info("worker %s stopped", self.worker_id)

    def _should_stop(self) -> bool:
        return self._stop.is_set() or self._claim_lost.is_set()

    def _register(self) -> bool:
        """Write the workers row, then reconcile until it succeeds (backing off); False if stopped first."""
        backoff = _Backoff()
        self._beat()
        while not self._stop.is_set():
            with self.model_lock:
                self.reconciler.reconcile()
            if self.reconciler.last_error is None:
                self._last_reconcile = time.monotonic()
                self.ready.set()
                self._beat()
                log.info("worker %s serving state version %d", self.worker_id, self.reconciler.version)
                return True
            self._stop.wait(backoff.next())
        return False

    # -- helper threads ----------------------------------------------------------------------

    def _beat(self, status: str | None = None) -> None:
        """Heartbeat: the workers row, and the lease of the running job. Never raises."""
        with self._beat_lock:
            job_id = self._current
            held = self.heartbeat.beat(status or self.status, job_id)
            if not held and self._current == job_id:
                log.warning("worker %s lost its claim on job %s", self.worker_id, job_id)
                self._claim_lost.set()

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            self._beat()

    def _nudge_loop(self) -> None:
        backoff = _Backoff()
        subscription: NudgeSubscription | None = None
        while not self._stop.is_set():
            try:
                if subscription is None:
                    subscription = self.queue.nudges(self.consumer)
                if subscription.get(timeout=1.0) is not None:
                    self._reconcile_wanted.set()
                backoff.reset()
            except Exception as exc:
                log.warning("nudge subscription of worker %s failed: %s", self.worker_id, exc)
                if subscription is not None:
                    subscription.close()
                    subscription = None
                self._stop.wait(backoff.next())
        if subscription is not None:
            subscription.close()

    # -- the model thread --------------------------------------------------------------------

    def _loop(self) -> None:
        backoff = _Backoff()
        while not self._stop.is_set():
            try:
                self._retry_acks()
                self._maybe_reconcile()
                self._maybe_sweep()
                delivery = self._next_delivery()
                if delivery is not None:
                    self._handle(delivery)
                backoff.reset()
            except (QueueUnavailable, SQLAlchemyError) as exc:
                log.warning("worker %s: %s; retrying", self.worker_id, exc)
                self._stop.wait(backoff.next())
            except Exception:
                log.exception("worker %s: unexpected error; retrying", self.worker_id)
                self._stop.wait(backoff.next())

    def _maybe_reconcile(self) -> None:
        due = time.monotonic() - self._last_reconcile >= self.settings.reconcile_seconds
        if due or self._reconcile_wanted.is_set():
            self._reconcile_wanted.clear()
            self._reconcile_now()

    def _reconcile_now(self) -> None:
        """Bring the weights to the desired state; the reconciler reports a new state at once (``on_change``)."""
        with self.model_lock:
            self.reconciler.reconcile()
        self._last_reconcile = time.monotonic()

    def _maybe_sweep(self) -> None:
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.sweep_seconds
        lease = self.settings.worker_lease_seconds
        try:
            with self.session_factory() as session:
                report = sweep(session, self.queue, base_model=self.lm.name, requeue_interval=lease)
            if report.retried or report.failed or report.requeued or report.cancelled:
                log.info("sweep by %s: %s", self.worker_id, report)
            self._reclaimed.extend(self.queue.reclaim(self.consumer, idle_seconds=lease))
        except (QueueUnavailable, SQLAlchemyError) as exc:
            log.warning("sweep by %s failed: %s", self.worker_id, exc)

    def _next_delivery(self) -> Delivery | None:
        if self._reclaimed:
            return self._reclaimed.popleft()
        return self.queue.receive(self.consumer, timeout=self.poll_seconds)

    def _ack(self, delivery: Delivery) -> None:
        try:
            self.queue.ack(delivery)
        except QueueUnavailable as exc:
            log.warning("could not ack delivery %s of job %s: %s", delivery.delivery_id, delivery.job_id, exc)
            self._unacked.append(delivery)

    def _retry_acks(self) -> None:
        while self._unacked:
            self.queue.ack(self._unacked[0])
            self._unacked.popleft()

    def _handle(self, delivery: Delivery) -> None:
        """Claim and run one delivered job; deliveries of jobs not claimable are acked."""
        try:
            with self.session_factory() as session:
                job = claim(session, delivery.job_id, self.worker_id, self.settings.worker_lease_seconds)
        except SQLAlchemyError:
            self._reclaimed.appendleft(delivery)  # pending on us: nobody else gets it soon; retry it
            raise
        if job is None:
            self._ack(delivery)
            return
        self._claim_lost.clear()
        self._current = job.id
        try:
            self._run(job)
        finally:
            self._current = None
            self._ack(delivery)

    def _run(self, job: Job) -> None:
        log.info("worker %s running %s job %s (attempt %d)", self.worker_id, job.kind, job.id, job.attempts)
        started = time.perf_counter()
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        status = "succeeded"
        try:
            with self.model_lock:
                self._reconcile_now()
                result = run_job(job, self.ctx)
        except (EditCancelled, ClaimLost) as exc:
            if self._claim_lost.is_set() or isinstance(exc, ClaimLost):
                log.warning("worker %s abandoned job %s: the claim was lost", self.worker_id, job.id)
                return
            if self._stop.is_set() and not self._cancel_requested(job.id):
                self._release(job.id)
                return
            status, error = "cancelled", cancelled_problem("cancelled on request while running")
        except DATABASE_UNAVAILABLE as exc:
            # Not a failure of the job: leave it running; its lease expires and the sweep retries it.
            log.warning("worker %s: the database failed during job %s, to be retried: %s", self.worker_id, job.id, exc)
            return
        except Exception as exc:
            error = problem_for(exc)
            status = "failed"
            if error["status"] >= 500:
                log.exception("job %s failed", job.id)
            else:
                log.info("job %s failed: %s", job.id, error["detail"])
        if self._finish(job.id, status, result, error):
            log_job_end(job, status, time.perf_counter() - started, self.worker_id)

    def _cancel_requested(self, job_id: str) -> bool:
        with self.session_factory() as session:
            return is_cancel_requested(session, job_id)

    def _release(self, job_id: str) -> None:
        """Shutting down mid-job: give the job back to the queue for another worker."""
        with self.session_factory() as session:
            released = release(session, job_id, self.worker_id)
        if released:
            log.info("worker %s released job %s", self.worker_id, job_id)
            try:
                self.queue.enqueue(job_id)
            except QueueUnavailable as exc:  # the sweep re-enqueues it
                log.warning("could not re-enqueue released job %s: %s", job_id, exc)

    def _finish(self, job_id: str, status: str, result: dict[str, Any] | None, error: dict[str, Any] | None) -> bool:
        """Record the outcome; whether it was recorded."""
        try:
            with self.session_factory() as session:
                done = finish(session, job_id, self.worker_id, status=status, result=result, error=error)
        except SQLAlchemyError as exc:  # the lease expires and the sweep retries the job
            log.warning("could not record the outcome of job %s: %s", job_id, exc)
            return False
        if not done:
            log.warning("job %s finished as %s but the claim was lost first", job_id, status)
        return done


def main(settings: Settings | None = None) -> None:
    """``creme worker``: load the model, connect, and run until SIGTERM/SIGINT (twice: exit now)."""
    from service.db.session import make_engine, make_session_factory
    from service.engine.loading import load_model
    from service.jobs import queue_for
    from service.settings import get_settings

    settings = settings or get_settings()
    configure_logging(settings.log_format, level=logging.INFO)
    lm = load_model(settings.model, cache_dir=settings.cache_dir, dtype=settings.dtype, device=settings.device)
    engine = make_engine(settings.database_url)
    queue = queue_for(settings)
    worker = Worker(settings, lm, make_session_factory(engine), queue)

    def on_signal(signum: int, _frame: Any) -> None:
        if worker.stopping:
            raise SystemExit(128 + signum)
        log.info("signal %d: stopping after the current step", signum)
        worker.request_stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.run_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        queue.close()
        engine.dispose()
