"""The queue port: what the gateway and the workers need from a job queue, and nothing more.

The queue carries only job ids and nudges; the database holds the jobs themselves. Each base model
has a queue of its own (:meth:`JobQueue.for_model`), so a worker receives only its model's jobs;
nudges reach every subscriber whatever the model. Delivery is
at least once: a job id can be delivered again after a reclaim or after the queue lost its
bookkeeping, so consumers claim the job row in the database before doing any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Delivery", "JobQueue", "NudgeSubscription", "QueueUnavailable"]


class QueueUnavailable(RuntimeError):
    """The queue cannot be reached or has been closed; the operation did not happen."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery of a job id to a consumer; acknowledge it with `JobQueue.ack`.

    `delivery_id` names the queue entry and stays the same when a reclaim redelivers it.
    """

    job_id: str
    delivery_id: str
    times_delivered: int


@runtime_checkable
class NudgeSubscription(Protocol):
    """Nudges published after the subscription was opened, in order, for one consumer."""

    def get(self, timeout: float) -> str | None:
        """The next nudge, waiting up to `timeout` seconds; None if none came or it is closed."""
        ...

    def close(self) -> None:
        """Stop receiving nudges; idempotent."""
        ...


@runtime_checkable
class JobQueue(Protocol):
    """A FIFO of job ids with per-consumer pending deliveries, plus a broadcast nudge channel.

    Every method except `healthy` and `close` raises `QueueUnavailable` when the transport fails
    or the queue is closed.
    """

    def for_model(self, model: str) -> JobQueue:
        """The queue of base model `model`'s jobs (the same object for the same name), sharing this one's
        transport and nudges; closing this queue closes it too."""
        ...

    def enqueue(self, job_id: str) -> None:
        """Append `job_id` to the queue."""
        ...

    def receive(self, consumer: str, timeout: float) -> Delivery | None:
        """The oldest undelivered job id, now pending on `consumer`; None after `timeout` seconds."""
        ...

    def ack(self, delivery: Delivery) -> None:
        """Forget a delivery for good (job done or given up); acking twice is harmless."""
        ...

    def reclaim(self, consumer: str, idle_seconds: float) -> list[Delivery]:
        """Move deliveries pending on *other* consumers for at least `idle_seconds` to `consumer`.

        Each returned delivery has `times_delivered` incremented. Adapters may return a bounded
        batch; call again to get more.
        """
        ...

    def depth(self) -> int:
        """Job ids not yet delivered plus deliveries pending and not acknowledged (of this queue alone)."""
        ...

    def publish_nudge(self, message: str) -> None:
        """Send `message` to every open nudge subscription (of every process, for shared queues)."""
        ...

    def nudges(self, consumer: str) -> NudgeSubscription:
        """Open a subscription; it sees the nudges published after this call returns."""
        ...

    def healthy(self) -> bool:
        """Whether the queue answers right now; never raises."""
        ...

    def close(self) -> None:
        """Release connections and subscriptions; idempotent. Later calls raise QueueUnavailable."""
        ...
