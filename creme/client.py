"""Python client of the CREME service: :class:`Client` (blocking) and :class:`AsyncClient` (asyncio).

Both have the same methods and return the same typed results; errors are :class:`CremeError`
subclasses. The requests, answers and waiting are written once (``creme._ops``); the two classes
only send the requests and sleep between polls, each in its own way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import httpx

from creme import _ops as ops
from creme._errors import (
    Conflict,
    ConnectionFailed,
    CremeError,
    Forbidden,
    Invalid,
    NotFound,
    PreconditionFailed,
    Unauthorized,
    Unavailable,
    WaitTimeout,
)
from creme._models import (
    Edit,
    EditEvent,
    Generation,
    Job,
    LensLayer,
    LensResult,
    LensTarget,
    LensToken,
    LocateResult,
    ModelState,
    StateChange,
    WorkerState,
)

__all__ = [
    "AsyncClient",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "CremeError",
    "Edit",
    "EditEvent",
    "Forbidden",
    "Generation",
    "Invalid",
    "Job",
    "LensLayer",
    "LensResult",
    "LensTarget",
    "LensToken",
    "LocateResult",
    "ModelState",
    "NotFound",
    "PreconditionFailed",
    "StateChange",
    "Unauthorized",
    "Unavailable",
    "WaitTimeout",
    "WorkerState",
]

T = TypeVar("T")

TIMEOUT = 30.0  # seconds per request, on top of any time the server is asked to hold it
ANALYSIS_WAIT = 300.0


class Client:
    """A blocking client of the service at ``url`` (e.g. ``http://127.0.0.1:8000``).

    ``api_key`` is sent as ``Authorization: Bearer``; ``timeout`` bounds each request, plus the
    seconds a ``wait`` asks the server to hold it. ``model`` names the base model of every edit,
    analysis and query, and scopes the model, edit and job reads (needed once the service serves
    several). Use it as a context manager, or :meth:`close` it.
    """

    def __init__(
        self, url: str, api_key: str | None = None, timeout: float = TIMEOUT, *, model: str | None = None
    ) -> None:
        self.url, self.timeout, self.base_model = url, timeout, model
        self._http = httpx.Client(base_url=url, headers=ops.auth_headers(api_key))

    def _run(self, op: ops.Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration as done:
                return done.value
            reply = self._send(step) if isinstance(step, ops.Call) else time.sleep(step.seconds)

    def _send(self, call: ops.Call) -> httpx.Response:
        try:
            return self._http.request(**call.for_model(self.base_model).options(self.timeout))
        except httpx.TransportError as exc:
            raise ops.connection_failed(call, self._http.base_url, exc) from exc

    def edit(
        self,
        prompt: str,
        hop1_phrase: str,
        bridge: str | None = None,
        answer: str | None = None,
        *,
        layers: list[int] | None = None,
        method: str | None = None,
        apply: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Edit:
        """Submit an edit of a failing two-hop ``prompt``; only the options given are sent.

        ``extra`` are further body fields (``paraphrases``, ``templates``, ``judge``, ...). Without
        ``wait`` the edit comes back as it stands (``pending``, mostly); with it, once its job ended or after ``wait``
        seconds, whichever is first (no error if it is still running: :meth:`wait` for it).
        """
        body = ops.edit_body(prompt, hop1_phrase, bridge, answer, layers, method, apply, extra)
        return self._run(ops.create_edit(body, wait, idempotency_key))

    def wait(self, item: ops.Item, timeout: float = 300.0, poll: float = ops.POLL) -> ops.Item:
        """``item`` (an edit or a job) read again once its job has ended; :class:`WaitTimeout` after ``timeout`` s.

        Polls, backing off up to ``poll`` seconds between reads. A failed job is returned, not raised.
        """
        return self._run(ops.wait(item, timeout, poll))

    def edits(
        self, status: str | None = None, limit: int | None = None, *, page_size: int = ops.PAGE_SIZE
    ) -> Iterator[Edit]:
        """Edits newest first, optionally only those with ``status``: all, or the first ``limit``.

        Reads ``page_size`` edits per request (at most 100), following the server's cursor lazily.
        """
        pages = ops.EditPages(status, limit, page_size)
        while (page := pages.next_page()) is not None:
            yield from self._run(page)

    def edit_by_id(self, edit_id: str) -> Edit:
        return self._run(ops.get_edit(edit_id))

    def apply(
        self, edit_id: str, if_match: int | str | None = None, *, idempotency_key: str | None = None
    ) -> StateChange:
        """Add the edit to the desired model state; ``if_match``: the state version it must be at (else 412)."""
        return self._run(ops.change_state(edit_id, "apply", if_match, idempotency_key))

    def revert(
        self, edit_id: str, if_match: int | str | None = None, *, idempotency_key: str | None = None
    ) -> StateChange:
        """Remove the edit from the desired model state; ``if_match``: the state version it must be at (else 412)."""
        return self._run(ops.change_state(edit_id, "revert", if_match, idempotency_key))

    def delta(self, edit_id: str) -> bytes:
        """The edit's weight delta, a safetensors file."""
        return self._run(ops.delta(edit_id))

    def peft(self, edit_id: str, fmt: str = "zip") -> bytes:
        """The edit as a PEFT LoRA adapter: a zip (or ``fmt="tar"``) of ``adapter_config.json`` and its weights."""
        return self._run(ops.peft(edit_id, fmt))

    def import_delta(self, data: bytes) -> Edit:
        """Store a delta file (as :meth:`delta` returns one) as a new ``computed`` edit; apply it with :meth:`apply`.

        The delta must be for the model the service serves (else :class:`Invalid`, ``fingerprint-mismatch``).
        """
        return self._run(ops.import_delta(data))

    def job(self, job_id: str) -> Job:
        return self._run(ops.get_job(job_id))

    def analyze(self, kind: str, body: dict[str, Any], *, wait: float = ANALYSIS_WAIT) -> Job:
        """Run an analysis (``logit-lens``, ``locate``, ``intervention``, ``compositionality``) to its end.

        The succeeded job; its problem raised if it failed, :class:`WaitTimeout` after ``wait`` seconds.
        """
        return self._run(ops.analyze(kind, body, wait))

    def lens(
        self, prompt: str, targets: Sequence[str] = (), *, wait: float = ANALYSIS_WAIT, **extra: Any
    ) -> LensResult:
        """The logit lens of ``prompt`` with ``targets``' probabilities and ranks; ``extra``: ``top_k``, ..."""
        return self._run(ops.lens(prompt, targets, extra, wait))

    def locate(
        self, prompt: str, hop1_phrase: str, bridge: str, answer: str, *, wait: float = ANALYSIS_WAIT, **extra: Any
    ) -> LocateResult:
        """Where patching in the guide run's activations raises p(answer); ``extra``: ``window``."""
        return self._run(ops.locate(prompt, hop1_phrase, bridge, answer, extra, wait))

    def generate(self, prompt: str, max_new_tokens: int = 16, *, wait: float = 120.0) -> Generation:
        """Greedy continuation of ``prompt`` on the current (edited) model."""
        return self._run(ops.generate(prompt, max_new_tokens, wait))

    def model(self) -> ModelState:
        """The client's model (else the only one served, or the gateway's): its desired state and each worker's."""
        return self._run(ops.model())

    def models(self) -> list[ModelState]:
        """Every base model served, and the gateway's own."""
        return self._run(ops.models())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """The asyncio twin of :class:`Client`: the same constructor and methods, to be awaited.

    :meth:`edits` is an async iterator.
    """

    def __init__(
        self, url: str, api_key: str | None = None, timeout: float = TIMEOUT, *, model: str | None = None
    ) -> None:
        self.url, self.timeout, self.base_model = url, timeout, model
        self._http = httpx.AsyncClient(base_url=url, headers=ops.auth_headers(api_key))

    async def _run(self, op: ops.Op[T]) -> T:
        reply: Any = None
        while True:
            try:
                step = op.send(reply)
            except StopIteration as done:
                return done.value
            reply = await self._send(step) if isinstance(step, ops.Call) else await asyncio.sleep(step.seconds)

    async def _send(self, call: ops.Call) -> httpx.Response:
        try:
            return await self._http.request(**call.for_model(self.base_model).options(self.timeout))
        except httpx.TransportError as exc:
            raise ops.connection_failed(call, self._http.base_url, exc) from exc

    async def edit(
        self,
        prompt: str,
        hop1_phrase: str,
        bridge: str | None = None,
        answer: str | None = None,
        *,
        layers: list[int] | None = None,
        method: str | None = None,
        apply: str | None = None,
        wait: float | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Edit:
        """See :meth:`Client.edit`."""
        body = ops.edit_body(prompt, hop1_phrase, bridge, answer, layers, method, apply, extra)
        return await self._run(ops.create_edit(body, wait, idempotency_key))

    async def wait(self, item: ops.Item, timeout: float = 300.0, poll: float = ops.POLL) -> ops.Item:
        """See :meth:`Client.wait`."""
        return await self._run(ops.wait(item, timeout, poll))

    async def edits(
        self, status: str | None = None, limit: int | None = None, *, page_size: int = ops.PAGE_SIZE
    ) -> AsyncIterator[Edit]:
        """See :meth:`Client.edits`."""
        pages = ops.EditPages(status, limit, page_size)
        while (page := pages.next_page()) is not None:
            for edit in await self._run(page):
                yield edit

    async def edit_by_id(self, edit_id: str) -> Edit:
        return await self._run(ops.get_edit(edit_id))

    async def apply(
        self, edit_id: str, if_match: int | str | None = None, *, idempotency_key: str | None = None
    ) -> StateChange:
        """See :meth:`Client.apply`."""
        return await self._run(ops.change_state(edit_id, "apply", if_match, idempotency_key))

    async def revert(
        self, edit_id: str, if_match: int | str | None = None, *, idempotency_key: str | None = None
    ) -> StateChange:
        """See :meth:`Client.revert`."""
        return await self._run(ops.change_state(edit_id, "revert", if_match, idempotency_key))

    async def delta(self, edit_id: str) -> bytes:
        """See :meth:`Client.delta`."""
        return await self._run(ops.delta(edit_id))

    async def peft(self, edit_id: str, fmt: str = "zip") -> bytes:
        """See :meth:`Client.peft`."""
        return await self._run(ops.peft(edit_id, fmt))

    async def import_delta(self, data: bytes) -> Edit:
        """See :meth:`Client.import_delta`."""
        return await self._run(ops.import_delta(data))

    async def job(self, job_id: str) -> Job:
        return await self._run(ops.get_job(job_id))

    async def analyze(self, kind: str, body: dict[str, Any], *, wait: float = ANALYSIS_WAIT) -> Job:
        """See :meth:`Client.analyze`."""
        return await self._run(ops.analyze(kind, body, wait))

    async def lens(
        self, prompt: str, targets: Sequence[str] = (), *, wait: float = ANALYSIS_WAIT, **extra: Any
    ) -> LensResult:
        """See :meth:`Client.lens`."""
        return await self._run(ops.lens(prompt, targets, extra, wait))

    async def locate(
        self, prompt: str, hop1_phrase: str, bridge: str, answer: str, *, wait: float = ANALYSIS_WAIT, **extra: Any
    ) -> LocateResult:
        """See :meth:`Client.locate`."""
        return await self._run(ops.locate(prompt, hop1_phrase, bridge, answer, extra, wait))

    async def generate(self, prompt: str, max_new_tokens: int = 16, *, wait: float = 120.0) -> Generation:
        """See :meth:`Client.generate`."""
        return await self._run(ops.generate(prompt, max_new_tokens, wait))

    async def models(self) -> list[ModelState]:
        return await self._run(ops.models())

    async def model(self) -> ModelState:
        """See :meth:`Client.model`."""
        return await self._run(ops.model())

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
