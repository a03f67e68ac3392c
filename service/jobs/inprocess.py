"""The in-process queue adapter: the embedded default, and the reference for the port's contract."""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from service.jobs.queue import Delivery, QueueUnavailable

__all__ = ["InProcessQueue"]

_MAX_BUFFERED_NUDGES = 1000


@dataclass(slots=True)
class _Pending:
    job_id: str
    consumer: str
    delivered_at: float
    times_delivered: int


class _Subscription:
    """Nudges buffered for one subscriber (the oldest are dropped past a bound)."""

    def __init__(self, consumer: str) -> None:
        self.consumer = consumer
        self._cond = threading.Condition()
        self._messages: deque[str] = deque(maxlen=_MAX_BUFFERED_NUDGES)
        self._closed = False

    def _put(self, message: str) -> None:
        with self._cond:
            if not self._closed:
                self._messages.append(message)
                self._cond.notify_all()

    def get(self, timeout: float) -> str | None:
        with self._cond:
            self._cond.wait_for(lambda: self._messages or self._closed, timeout=max(0.0, timeout))
            if self._closed or not self._messages:
                return None
            return self._messages.popleft()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._messages.clear()
            self._cond.notify_all()


class InProcessQueue:
    """A thread-safe FIFO of job ids with pending tracking; nudges reach every open subscription.

    The queues of the models (:meth:`for_model`) share the root's lock, nudges and closed state:
    closing any of them closes all.
    """

    def __init__(self, *, _root: InProcessQueue | None = None) -> None:
        self._root = _root or self
        self._cond = self._root._cond if _root else threading.Condition()
        self._queued: deque[tuple[str, str]] = deque()  # (delivery_id, job_id)
        self._pending: dict[str, _Pending] = {}
        self._ids = self._root._ids if _root else itertools.count(1)
        self._subscriptions: weakref.WeakSet[_Subscription] = self._root._subscriptions if _root else weakref.WeakSet()
        self._models: dict[str, InProcessQueue] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._root._closed:
            raise QueueUnavailable("the in-process queue is closed")

    def for_model(self, model: str) -> InProcessQueue:
        root = self._root
        with self._cond:
            self._check_open()
            if model not in root._models:
                root._models[model] = InProcessQueue(_root=root)
            return root._models[model]

    def enqueue(self, job_id: str) -> None:
        with self._cond:
            self._check_open()
            self._queued.append((str(next(self._ids)), job_id))
            self._cond.notify_all()  # the models' queues share the condition: wake their receivers too

    def receive(self, consumer: str, timeout: float) -> Delivery | None:
        with self._cond:
            self._check_open()
            self._cond.wait_for(lambda: self._queued or self._root._closed, timeout=max(0.0, timeout))
            self._check_open()
            if not self._queued:
                return None
            delivery_id, job_id = self._queued.popleft()
            self._pending[delivery_id] = _Pending(job_id, consumer, time.monotonic(), 1)
            return Delivery(job_id=job_id, delivery_id=delivery_id, times_delivered=1)

    def ack(self, delivery: Delivery) -> None:
        with self._cond:
            self._check_open()
            self._pending.pop(delivery.delivery_id, None)

    def reclaim(self, consumer: str, idle_seconds: float) -> list[Delivery]:
        with self._cond:
            self._check_open()
            now = time.monotonic()
            claimed: list[Delivery] = []
            for delivery_id, entry in self._pending.items():
                if entry.consumer == consumer or now - entry.delivered_at < idle_seconds:
                    continue
                entry.consumer = consumer
                entry.delivered_at = now
                entry.times_delivered += 1
                claimed.append(Delivery(entry.job_id, delivery_id, entry.times_delivered))
            return claimed

    def depth(self) -> int:
        with self._cond:
            self._check_open()
            return len(self._queued) + len(self._pending)

    def publish_nudge(self, message: str) -> None:
        with self._cond:
            self._check_open()
            subscriptions = list(self._subscriptions)
        for subscription in subscriptions:
            subscription._put(message)

    def nudges(self, consumer: str) -> _Subscription:
        subscription = _Subscription(consumer)
        with self._cond:
            self._check_open()
            self._subscriptions.add(subscription)
        return subscription

    def healthy(self) -> bool:
        return not self._root._closed

    def close(self) -> None:
        with self._cond:
            self._root._closed = True
            subscriptions = list(self._subscriptions)
            self._cond.notify_all()
        for subscription in subscriptions:
            subscription.close()
