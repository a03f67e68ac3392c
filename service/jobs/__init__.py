"""Jobs: the queue port and its adapters (in-process and Redis).

`make_queue` picks the adapter from configuration; nothing else needs to know which one runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.jobs.inprocess import InProcessQueue
from service.jobs.queue import Delivery, JobQueue, NudgeSubscription, QueueUnavailable

if TYPE_CHECKING:
    from service.jobs.redis_queue import RedisQueue
    from service.settings import Settings

__all__ = [
    "Delivery",
    "InProcessQueue",
    "JobQueue",
    "NudgeSubscription",
    "QueueUnavailable",
    "RedisQueue",
    "make_queue",
    "queue_for",
]


def __getattr__(name: str) -> Any:
    # RedisQueue is loaded on first use so that importing service.jobs never imports redis.
    if name == "RedisQueue":
        from service.jobs.redis_queue import RedisQueue

        return RedisQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_queue(redis_url: str | None, **redis_options: Any) -> JobQueue:
    """An in-process queue when `redis_url` is None or empty, else a `RedisQueue` with the options."""
    if not redis_url:
        if redis_options:
            raise TypeError(f"options {sorted(redis_options)} need a redis_url")
        return InProcessQueue()
    from service.jobs.redis_queue import RedisQueue  # imported lazily: redis stays an edge

    return RedisQueue(redis_url, **redis_options)


def queue_for(settings: Settings) -> JobQueue:
    """The queue the settings describe: Redis (stream and channel under ``queue_prefix``) or in-process."""
    if not settings.redis_url:
        return InProcessQueue()
    prefix = settings.queue_prefix
    return make_queue(settings.redis_url, stream=f"{prefix}:jobs", nudge_channel=f"{prefix}:nudge")
