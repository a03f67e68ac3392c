"""Every operation of the client, written once for :class:`Client` and :class:`AsyncClient`.

An operation is a generator: it yields a :class:`Call` (send this request; it resumes with the
response) or a :class:`Sleep` (pause; it resumes with None) and returns its result. It builds the
requests, reads the answers and raises the errors; the two clients only send and sleep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from creme._errors import ConnectionFailed, WaitTimeout, problem_error, response_error
from creme._models import Edit, Generation, Job, LensResult, LocateResult, ModelState, StateChange

T = TypeVar("T")
Item = TypeVar("Item", Edit, Job)

_MODEL_SCOPED = ("/v1/model", "/v1/edits", "/v1/jobs", "/v1/edits:import")
PAGE_SIZE = 100  # the largest page GET /v1/edits serves (its default is 20)
FIRST_POLL = 0.1
POLL = 1.0  # the longest pause between two reads of a job


@dataclass(frozen=True)
class Call:
    """One HTTP request (a JSON body, or raw ``content``); ``hold`` is how long the server may hold it
    (``Prefer: wait``) before answering."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hold: float = 0.0

    def for_model(self, model: str | None) -> Call:
        """This call for base model ``model``: named in every JSON body (each one creates a job) and as the
        ``model`` of the model, edit and job reads and of an import."""
        if model is None:
            return self
        if self.method == "POST" and isinstance(self.json, dict):
            return replace(self, json={"model": model, **self.json})
        if self.path in _MODEL_SCOPED:
            return replace(self, params={"model": model, **(self.params or {})})
        return self

    def options(self, timeout: float) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` (and of the async one)."""
        return {
            "method": self.method,
            "url": self.path,
            "json": self.json,
            "content": self.content,
            "params": self.params,
            "headers": self.headers,
            "timeout": timeout + self.hold,
        }


@dataclass(frozen=True)
class Sleep:
    seconds: float


Op = Generator[Call | Sleep, Any, T]


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def connection_failed(call: Call, base_url: httpx.URL, exc: httpx.TransportError) -> ConnectionFailed:
    """The error for a request that got no answer: what was asked of whom, and why it failed."""
    why = "no answer in time" if isinstance(exc, httpx.TimeoutException) else "cannot reach the service"
    detail = f"{call.method} {base_url.join(call.path)}: {why} ({type(exc).__name__}: {exc})"
    return ConnectionFailed(None, "about:blank", "Connection failed", detail)


def _path(*parts: str) -> str:
    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


def _prefer(wait: float | None) -> dict[str, str]:
    """``Prefer: wait=N`` in whole seconds (rounded up), or nothing."""
    return {} if wait is None else {"Prefer": f"wait={max(0, math.ceil(wait))}"}


def _send(call: Call) -> Op[httpx.Response]:
    response = yield call
    if response.is_error:
        raise response_error(response)
    return response


def _json(call: Call) -> Op[Any]:
    return (yield from _send(call)).json()


# -- edits ---------------------------------------------------------------------------------


def edit_body(
    prompt: str,
    hop1_phrase: str,
    bridge: str | None,
    answer: str | None,
    layers: list[int] | None,
    method: str | None,
    apply: str | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The ``POST /v1/edits`` body: only the options given, so the server's defaults hold for the rest."""
    options = {"bridge": bridge, "answer": answer, "layers": layers, "method": method, "apply": apply}
    given = {name: value for name, value in options.items() if value is not None}
    return {"prompt": prompt, "hop1_phrase": hop1_phrase, **given, **extra}


def create_edit(body: dict[str, Any], wait: float | None, idempotency_key: str | None) -> Op[Edit]:
    """Submit an edit; with ``wait``, hold on (long-poll, then polling) until its job ends or ``wait`` s pass."""
    deadline = time.monotonic() + (wait or 0.0)
    headers = _prefer(wait) | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
    response = yield from _send(Call("POST", "/v1/edits", json=body, headers=headers, hold=wait or 0.0))
    data = response.json()
    if response.status_code == 200:
        return Edit.from_json(data)
    if wait is not None:
        yield from poll_job(data["job"]["id"], deadline)
    return (yield from get_edit(data["id"]))


def get_edit(edit_id: str) -> Op[Edit]:
    return Edit.from_json((yield from _json(Call("GET", _path("edits", edit_id)))))


class EditPages:
    """``GET /v1/edits`` page by page, newest first, following ``next_cursor``; at most ``limit`` edits."""

    def __init__(self, status: str | None, limit: int | None, page_size: int = PAGE_SIZE) -> None:
        self.status = status
        self.page_size = page_size
        self.remaining = limit
        self.cursor: str | None = None
        self.finished = limit is not None and limit <= 0

    def next_page(self) -> Op[list[Edit]] | None:
        """The operation reading the next page, or None after the last."""
        return None if self.finished else self._read()

    def _read(self) -> Op[list[Edit]]:
        size = self.page_size if self.remaining is None else min(self.remaining, self.page_size)
        params: dict[str, Any] = {"limit": size}
        if self.status is not None:
            params["status"] = self.status
        if self.cursor is not None:
            params["cursor"] = self.cursor
        data = yield from _json(Call("GET", "/v1/edits", params=params))
        items = [Edit.from_json(item) for item in data["items"]][:size]
        self.cursor = data.get("next_cursor")
        if self.remaining is not None:
            self.remaining -= len(items)
        self.finished = not self.cursor or self.remaining == 0
        return items


def change_state(edit_id: str, action: str, if_match: int | str | None, idempotency_key: str | None) -> Op[StateChange]:
    """Apply or revert an edit; ``if_match`` is the state version expected (an int) or an ETag as sent."""
    headers: dict[str, str] = {}
    if if_match is not None:
        headers["If-Match"] = f'"{if_match}"' if isinstance(if_match, int) else if_match
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    return StateChange.from_json((yield from _json(Call("POST", _path("edits", edit_id, action), headers=headers))))


def delta(edit_id: str) -> Op[bytes]:
    return (yield from _send(Call("GET", _path("edits", edit_id, "delta")))).content


def peft(edit_id: str, fmt: str) -> Op[bytes]:
    """The edit as a PEFT LoRA adapter archive (``fmt``: ``zip`` or ``tar``)."""
    return (yield from _send(Call("GET", _path("edits", edit_id, "peft"), params={"format": fmt}))).content


def import_delta(data: bytes) -> Op[Edit]:
    """Store a delta file as a new computed edit (``POST /v1/edits:import``)."""
    headers = {"Content-Type": "application/octet-stream"}
    return Edit.from_json((yield from _json(Call("POST", "/v1/edits:import", content=data, headers=headers))))


def model() -> Op[ModelState]:
    return ModelState.from_json((yield from _json(Call("GET", "/v1/model"))))


def models() -> Op[list[ModelState]]:
    """Every base model served (and the gateway's own)."""
    return [ModelState.from_json(item) for item in (yield from _json(Call("GET", "/v1/models")))["items"]]


# -- jobs ----------------------------------------------------------------------------------


def get_job(job_id: str) -> Op[Job]:
    return Job.from_json((yield from _json(Call("GET", _path("jobs", job_id)))))


def poll_job(job_id: str, deadline: float, poll: float = POLL) -> Op[Job]:
    """Read the job until it is done or ``deadline`` (monotonic) passes, backing off up to ``poll`` s; the last read."""
    interval = min(FIRST_POLL, poll)
    while True:
        job = yield from get_job(job_id)
        remaining = deadline - time.monotonic()
        if job.done or remaining <= 0:
            return job
        yield Sleep(min(interval, remaining))
        interval = min(interval * 2, poll)


def wait(item: Item, timeout: float, poll: float) -> Op[Item]:
    """``item`` read again once its job has ended (an edit: the job computing it); :class:`WaitTimeout` else.

    The read endpoints do not long-poll, so this polls.
    """
    job_id = item.job_id if isinstance(item, Edit) else item.id
    if job_id is None:
        raise ValueError(f"edit {item.id} has no job to wait for")
    job = yield from poll_job(job_id, time.monotonic() + timeout, poll)
    _check_done(job, timeout)
    if isinstance(item, Edit):
        return (yield from get_edit(item.id))
    return job


def _check_done(job: Job, waited: float) -> None:
    if not job.done:
        detail = f"job {job.id} is still {job.status} after {waited:g} s"
        raise WaitTimeout(None, "about:blank", "Wait timed out", detail, {"job_id": job.id})


def _succeeded(job: Job, deadline: float, wait: float) -> Op[Job]:
    """``job`` once it has succeeded (polling it up to ``deadline``); its problem raised if it failed."""
    if not job.done:
        job = yield from poll_job(job.id, deadline)
    _check_done(job, wait)
    if job.status != "succeeded":
        problem = job.error or {"title": f"Job {job.status}", "detail": f"job {job.id} {job.status}"}
        raise problem_error({**problem, "job_id": job.id})
    return job


# -- analyses and queries ------------------------------------------------------------------


def analyze(kind: str, body: dict[str, Any], wait: float) -> Op[Job]:
    """Run analysis ``kind`` (``logit-lens``, ``locate``, ...); the succeeded job, waited for up to ``wait`` s."""
    deadline = time.monotonic() + wait
    call = Call("POST", _path("analyses", kind), json=body, headers=_prefer(wait), hold=wait)
    job = Job.from_json((yield from _json(call)))
    return (yield from _succeeded(job, deadline, wait))


def lens(prompt: str, targets: Sequence[str], extra: dict[str, Any], wait: float) -> Op[LensResult]:
    job = yield from analyze("logit-lens", {"prompt": prompt, "targets": list(targets), **extra}, wait)
    return LensResult.from_result(job.result or {}, job.id)


def locate(
    prompt: str, hop1_phrase: str, bridge: str, answer: str, extra: dict[str, Any], wait: float
) -> Op[LocateResult]:
    body = {"prompt": prompt, "hop1_phrase": hop1_phrase, "bridge": bridge, "answer": answer, **extra}
    job = yield from analyze("locate", body, wait)
    return LocateResult.from_result(job.result or {}, job.id)


def generate(prompt: str, max_new_tokens: int, wait: float) -> Op[Generation]:
    """Greedy text on the current model; the server answers within ``wait`` s, else this polls the job."""
    deadline = time.monotonic() + wait
    body = {"prompt": prompt, "max_new_tokens": max_new_tokens}
    response = yield from _send(Call("POST", "/v1/generate", json=body, headers=_prefer(wait), hold=wait))
    data = response.json()
    if response.status_code == 200:
        return Generation.from_result(data, data["job_id"])
    job = yield from _succeeded(Job.from_json(data), deadline, wait)
    return Generation.from_result(job.result or {}, job.id)
