"""The Redis adapter: a stream with one consumer group carries job ids; pub/sub carries nudges.

Each base model's jobs have a stream of their own, ``<stream>:<model>``
(:meth:`RedisQueue.for_model`), with the same group name; one pub/sub channel nudges every worker.
Acknowledged entries are deleted from the stream, so a stream holds exactly the queued and pending
job ids and `XLEN` is the depth. The consumer group is (re-)created at id ``0`` whenever
Redis reports it missing (first use, FLUSHALL, restart without persistence), so entries added
before the group existed are still delivered. Only this module imports redis.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from service.jobs.queue import Delivery, QueueUnavailable

__all__ = ["RedisQueue"]

_T = TypeVar("_T")
_FIELD = "job_id"


def _unavailable(op: str, exc: Exception) -> QueueUnavailable:
    return QueueUnavailable(f"redis {op} failed: {type(exc).__name__}: {exc}")


class _RedisSubscription:
    """A pub/sub subscription for one consumer; use it from one thread at a time."""

    def __init__(self, pubsub: Any, channel: str, consumer: str, timeout: float) -> None:
        self.consumer = consumer
        self._pubsub = pubsub
        self._closed = False
        try:
            pubsub.subscribe(channel)
            deadline = time.monotonic() + timeout
            # Wait for the confirmation so that nudges published after this returns are seen.
            while True:
                message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    raise QueueUnavailable(f"redis did not confirm the subscription to {channel!r}")
        except redis.RedisError as exc:
            self.close()
            raise _unavailable("SUBSCRIBE", exc) from exc
        except QueueUnavailable:
            self.close()
            raise

    def get(self, timeout: float) -> str | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            try:
                remaining = max(0.0, deadline - time.monotonic())
                message = self._pubsub.get_message(ignore_subscribe_messages=True, timeout=remaining)
            except redis.RedisError as exc:
                raise _unavailable("pub/sub read", exc) from exc
            if message is not None and message["type"] == "message":
                return str(message["data"])
            if time.monotonic() >= deadline:
                return None
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # closing a broken connection must not fail
            self._pubsub.close()


class _Shared:
    """What a root queue and its models' queues share: subscriptions, a lock and being closed."""

    def __init__(self) -> None:
        self.subscriptions: weakref.WeakSet[_RedisSubscription] = weakref.WeakSet()
        self.lock = threading.Lock()
        self.closed = False
        self.models: dict[str, RedisQueue] = {}


class RedisQueue:
    """Job ids in a Redis stream consumed by a consumer group; nudges over Redis pub/sub.

    `socket_timeout` bounds every command; blocking reads are split into waits shorter than it,
    so `receive` may wait longer than `socket_timeout` and a dead Redis still fails fast.
    """

    def __init__(
        self,
        url: str,
        stream: str = "creme:jobs",
        group: str = "workers",
        nudge_channel: str = "creme:nudge",
        *,
        socket_timeout: float = 5.0,
        connect_timeout: float = 2.0,
        health_timeout: float = 1.0,
        reclaim_batch: int = 100,
    ) -> None:
        if socket_timeout <= 0 or connect_timeout <= 0 or health_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.stream = stream
        self.group = group
        self.nudge_channel = nudge_channel
        self._socket_timeout = socket_timeout
        # Redis ends a BLOCK up to ~1/hz (100 ms) late; keep the socket waiting well past it.
        self._max_block = socket_timeout - min(1.0, socket_timeout / 2)
        self._reclaim_batch = reclaim_batch
        self._root_stream = stream  # the models' streams are named after it
        common: dict[str, Any] = {"decode_responses": True, "protocol": 2}
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            # Retry a dropped connection quickly; a timeout is not retried, so a hung server
            # fails within one socket_timeout.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2, supported_errors=(redis.ConnectionError,)),
            **common,
        )
        self._health = redis.Redis.from_url(
            url,
            socket_timeout=health_timeout,
            socket_connect_timeout=health_timeout,
            retry=Retry(NoBackoff(), 0),
            **common,
        )
        self._shared = _Shared()

    @property
    def _closed(self) -> bool:
        return self._shared.closed

    def for_model(self, model: str) -> RedisQueue:
        """The queue on stream ``<stream>:<model>``, over this queue's connections."""
        with self._shared.lock:
            if self._shared.closed:
                raise QueueUnavailable("the redis queue is closed")
            queue = self._shared.models.get(model)
            if queue is None:
                queue = copy.copy(self)  # the same clients and shared state; only the stream differs
                queue.stream = f"{self._root_stream}:{model}"
                self._shared.models[model] = queue
            return queue

    # -- plumbing ---------------------------------------------------------------------------

    def _create_group(self) -> None:
        try:
            self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise _unavailable("XGROUP CREATE", exc) from exc
        except redis.RedisError as exc:
            raise _unavailable("XGROUP CREATE", exc) from exc

    def _call(self, op: str, fn: Callable[[], _T]) -> _T:
        """Run one Redis call; re-create a missing group once; translate redis errors."""
        if self._closed:
            raise QueueUnavailable("the redis queue is closed")
        for attempt in (1, 2):
            try:
                return fn()
            except redis.ResponseError as exc:
                if attempt == 1 and str(exc).startswith("NOGROUP"):
                    self._create_group()
                    continue
                raise _unavailable(op, exc) from exc
            except redis.RedisError as exc:
                raise _unavailable(op, exc) from exc
        raise AssertionError("unreachable")

    # -- the port ---------------------------------------------------------------------------

    def enqueue(self, job_id: str) -> None:
        self._call("XADD", lambda: self._redis.xadd(self.stream, {_FIELD: job_id}))

    def receive(self, consumer: str, timeout: float) -> Delivery | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            block_ms = int(min(deadline - time.monotonic(), self._max_block) * 1000)
            reply = self._call(
                "XREADGROUP",
                lambda ms=block_ms: self._redis.xreadgroup(
                    self.group, consumer, {self.stream: ">"}, count=1, block=ms if ms > 0 else None
                ),
            )
            for _stream, entries in reply or []:
                for entry_id, fields in entries:
                    if fields and _FIELD in fields:
                        return Delivery(job_id=fields[_FIELD], delivery_id=entry_id, times_delivered=1)
                    self._drop(entry_id)  # not ours: never deliver it again
            if time.monotonic() >= deadline:
                return None

    def _drop(self, entry_id: str) -> None:
        def run() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.xack(self.stream, self.group, entry_id)
            pipe.xdel(self.stream, entry_id)
            pipe.execute()

        self._call("XACK", run)

    def ack(self, delivery: Delivery) -> None:
        self._drop(delivery.delivery_id)

    def reclaim(self, consumer: str, idle_seconds: float) -> list[Delivery]:
        min_idle_ms = max(0, int(idle_seconds * 1000))
        counts: dict[str, int] = {}
        start = "-"
        while len(counts) < self._reclaim_batch:
            page = self._call(
                "XPENDING",
                lambda s=start: self._redis.xpending_range(
                    self.stream, self.group, min=s, max="+", count=self._reclaim_batch, idle=min_idle_ms
                ),
            )
            for item in page:
                if item["consumer"] != consumer and len(counts) < self._reclaim_batch:
                    counts[item["message_id"]] = int(item["times_delivered"])
            if len(page) < self._reclaim_batch:
                break
            start = "(" + page[-1]["message_id"]
        if not counts:
            return []
        # XCLAIM re-checks the idle time, so two reclaimers never both get an entry; entries
        # deleted from the stream meanwhile are dropped from the pending list and not returned.
        claimed = self._call(
            "XCLAIM",
            lambda: self._redis.xclaim(
                self.stream, self.group, consumer, min_idle_time=min_idle_ms, message_ids=list(counts)
            ),
        )
        deliveries = []
        for entry_id, fields in claimed:
            if fields and _FIELD in fields:
                deliveries.append(Delivery(fields[_FIELD], entry_id, counts[entry_id] + 1))
            else:
                self._drop(entry_id)
        return deliveries

    def depth(self) -> int:
        return int(self._call("XLEN", lambda: self._redis.xlen(self.stream)))

    def publish_nudge(self, message: str) -> None:
        self._call("PUBLISH", lambda: self._redis.publish(self.nudge_channel, message))

    def nudges(self, consumer: str) -> _RedisSubscription:
        if self._closed:
            raise QueueUnavailable("the redis queue is closed")
        subscription = _RedisSubscription(
            self._redis.pubsub(), self.nudge_channel, consumer, timeout=self._socket_timeout
        )
        with self._shared.lock:
            self._shared.subscriptions.add(subscription)
        return subscription

    def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            return bool(self._health.ping())
        except Exception:
            return False

    def close(self) -> None:
        with self._shared.lock:
            if self._shared.closed:
                return
            self._shared.closed = True
            subscriptions = list(self._shared.subscriptions)
        for subscription in subscriptions:
            subscription.close()
        for client in (self._redis, self._health):
            with contextlib.suppress(Exception):  # closing must not fail on a dead server
                client.close()
