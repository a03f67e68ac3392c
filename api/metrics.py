"""Prometheus metrics: HTTP requests by route and status, and job/queue/state gauges read at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service.jobs.queue import JobQueue, QueueUnavailable
from service.usecases.jobs import job_counts, job_duration_stats
from service.usecases.model import model_status, served_models

log = logging.getLogger(__name__)

JOB_DURATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class _StateCollector:
    """Reads job counts and durations, and each model's queue depth and state, when scraped.

    The models are the gateway's own and those served.
    """

    def __init__(self, factory: sessionmaker[Session], queue: JobQueue, base_model: str, lease_seconds: float) -> None:
        self.factory = factory
        self.queue = queue
        self.base_model = base_model
        self.lease_seconds = lease_seconds

    def describe(self) -> list[Metric]:
        return []  # collected lazily: the database is read only when scraped

    def collect(self) -> Iterator[Metric]:
        try:
            with self.factory() as session:
                counts = job_counts(session)
                durations = job_duration_stats(session, JOB_DURATION_BUCKETS)
                statuses = served_models(session, self.lease_seconds)
                if self.base_model not in {s.base_model for s in statuses}:
                    statuses.insert(0, model_status(session, self.base_model, self.lease_seconds))
        except SQLAlchemyError as exc:
            log.warning("metrics: database unavailable: %s", type(exc).__name__)
            return
        try:
            depth = GaugeMetricFamily(
                "creme_queue_depth", "Job ids queued or pending in a model's queue.", labels=["base_model"]
            )
            for status in statuses:
                depth.add_metric([status.base_model], float(self.queue.for_model(status.base_model).depth()))
            yield depth
        except QueueUnavailable as exc:
            log.warning("metrics: queue depth unavailable: %s", exc)
        jobs = GaugeMetricFamily("creme_jobs", "Jobs in the database by kind and status.", labels=["kind", "status"])
        for (kind, job_status), n in sorted(counts.items()):
            jobs.add_metric([kind, job_status], float(n))
        yield jobs
        hist = HistogramMetricFamily(
            "creme_job_duration_seconds", "Run time of finished jobs.", labels=["kind", "status"]
        )
        for kind, job_status, cumulative, count, total in durations:
            buckets: list[tuple[str, float]] = [
                (str(b), float(c)) for b, c in zip(JOB_DURATION_BUCKETS, cumulative, strict=True)
            ]
            buckets.append(("+Inf", float(count)))
            hist.add_metric([kind, job_status], buckets, total)
        yield hist
        version = GaugeMetricFamily("creme_state_version", "Desired model-state version.", labels=["base_model"])
        live = GaugeMetricFamily("creme_live_workers", "Workers with a fresh heartbeat.", labels=["base_model"])
        for status in statuses:
            version.add_metric([status.base_model], float(status.state_version))
            live.add_metric([status.base_model], float(len(status.live_workers)))
        yield version
        yield live


class Metrics:
    """The gateway's metrics in a registry of its own (one per app, so apps never collide)."""

    def __init__(
        self, factory: sessionmaker[Session], queue: JobQueue, *, base_model: str, lease_seconds: float
    ) -> None:
        self.registry = CollectorRegistry()
        labels = ["method", "route", "status"]
        self.requests = Counter("creme_http_requests", "HTTP requests handled.", labels, registry=self.registry)
        self.latency = Histogram(
            "creme_http_request_duration_seconds", "HTTP request latency.", labels, registry=self.registry
        )
        self.registry.register(_StateCollector(factory, queue, base_model, lease_seconds))  # type: ignore[arg-type]

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        labels: dict[str, Any] = {"method": method, "route": route, "status": str(status)}
        self.requests.labels(**labels).inc()
        self.latency.labels(**labels).observe(seconds)
