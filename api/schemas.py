"""Request and response bodies of the API (separate from the ORM models) and their conversions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, create_model

from service.db.models import Edit, Job, StateEvent
from service.usecases.kinds import KINDS, JobKind
from service.usecases.model import ModelStatus
from service.usecases.validation import EditRequest, ProbeRequest

EditStatus = Literal["pending", "computing", "computed", "applied", "reverted", "failed"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
KindName = Literal[tuple(KINDS)]  # type: ignore[valid-type]  # every declared job kind


class Problem(BaseModel):
    """An RFC 9457 problem; extension members (``errors``, ``current_version``, ...) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None


MODEL_FIELD = "The base model (as `GET /v1/models` names it); may be left out while exactly one model is served."
MODEL_NAME: dict[str, Any] = {"min_length": 1, "max_length": 255, "pattern": r"^[^\x00-\x1f\x7f]+$"}  # no control chars


def model_query(description: str) -> Any:
    """The ``model`` query parameter of a read: a model name, or nothing."""
    return Query(description=description, **MODEL_NAME)


class EditCreate(EditRequest):
    """``POST /v1/edits``: a failing two-hop query to patch."""

    model: str | None = Field(None, description=MODEL_FIELD, **MODEL_NAME)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "The capital of the country where Mount Fuji is located is",
                    "hop1_phrase": "the country where Mount Fuji is located",
                    "apply": "if_safe",
                },
                {
                    "prompt": "The capital of the country where Mount Fuji is located is",
                    "hop1_phrase": "the country where Mount Fuji is located",
                    "bridge": "Japan",
                    "answer": "Tokyo",
                    "apply": "if_safe",
                },
            ]
        },
    )


class Link(BaseModel):
    id: str
    url: str


class EditAccepted(BaseModel):
    """202 answer to an edit submission: where the edit stands and the job computing it."""

    id: str
    status: EditStatus
    url: str
    job: Link


class EditEvent(BaseModel):
    """One apply or revert of an edit in the desired model state (the audit log)."""

    action: Literal["apply", "revert"]
    actor: str | None = Field(
        description="`key:<prefix>`, `api` (no key), or `worker:<id>` (a worker's own change: withdrawing a bad delta)."
    )
    at: datetime
    state_version: int = Field(description="The model-state version this change produced.")


class Inferred(BaseModel):
    """Whether the bridge and the answer were left out of the request, to be inferred from the model's own answers."""

    bridge: bool
    answer: bool


class EditOut(BaseModel):
    """An edit: its request, status, layers, metrics and history.

    A cancelled edit is ``failed`` with an ``error`` of type ``https://creme.dev/problems/cancelled``.
    """

    id: str
    status: EditStatus
    url: str
    base_model: str
    base_fingerprint: str | None
    prompt: str
    hop1_phrase: str
    bridge: str | None = Field(description="The bridge entity; null until the worker has inferred it.")
    answer: str | None = Field(description="The correct final answer; null until the worker has inferred it.")
    inferred: Inferred = Field(description="Which of bridge and answer the worker reads from the model.")
    paraphrases: list[str]
    generalization: list[ProbeRequest]
    specificity: list[ProbeRequest]
    layers: list[int] | None = Field(description="The edited layers; null until the worker chose them.")
    answer_aliases: list[str]
    bridge_aliases: list[str]
    method: str
    templates: str | list[str]
    judge: str
    apply: str
    safety: dict[str, Any] | None = Field(
        None, description="fixes_own_query, canaries checked/kept/regressions, generic_kl (nats/token), safe."
    )
    metrics: dict[str, Any] | None
    delta_norms: Any = Field(None, description="Per-layer Frobenius norms of ΔW, as the worker reported them.")
    state_version: int | None = Field(description="The model-state version the edit was computed on.")
    error: dict[str, Any] | None
    actor: str | None
    created_at: datetime
    updated_at: datetime
    applied_at: datetime | None
    reverted_at: datetime | None
    job_id: str | None
    imported: dict[str, Any] | None = Field(
        None, description="For an edit imported from a delta file: its sha256, size and family."
    )
    history: list[EditEvent] = Field(description="Every apply and revert of the edit, oldest first.")


class EditPage(BaseModel):
    items: list[EditOut]
    next_cursor: str | None


class StateOut(BaseModel):
    version: int
    active_edits: list[str]


class StateChange(BaseModel):
    """The edit after an apply/revert and the desired model state it produced."""

    edit: EditOut
    state: StateOut


class Progress(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int | None = None
    total: int | None = None
    message: str | None = None


class JobOut(BaseModel):
    """A job: status, progress, and its result or error (a problem object)."""

    id: str
    kind: KindName
    base_model: str = Field(description="The model whose workers run it.")
    status: JobStatus
    url: str
    payload: dict[str, Any]
    progress: Progress
    attempts: int
    max_attempts: int
    cancel_requested: bool
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None


class AnalysisAccepted(BaseModel):
    id: str
    kind: KindName
    status: JobStatus
    url: str


class WorkerOut(BaseModel):
    id: str
    host: str
    status: str
    fingerprint: str
    state_version: int
    weights_checksum: str | None
    last_heartbeat: datetime
    alive: bool
    n_layers: int | None
    dtype: str | None
    pristine_bytes: int | None = Field(description="Bytes of its copies of the layers edits touched.")


class ModelOut(BaseModel):
    """A base model: what it is, its desired state and each worker's; ``converged`` iff every live worker is at it."""

    base_model: str = Field(description="The model's name: what requests give as `model`.")
    served: bool = Field(description="Whether a live worker holds it.")
    family: str | None = Field(description="Architecture family, as its live workers report it.")
    dtype: str | None
    n_layers: int | None = Field(description="Depth, as its live workers registered it.")
    fingerprint: str | None
    state_version: int
    active_edits: list[str]
    pristine_bytes: int | None = Field(description="The most any live worker holds in pristine layer copies.")
    workers: list[WorkerOut]
    converged: bool


class ModelList(BaseModel):
    items: list[ModelOut]


def edit_url(edit_id: str) -> str:
    return f"/v1/edits/{edit_id}"


def job_url(job: Job) -> str:
    kind = KINDS.get(job.kind)
    return f"/v1/analyses/{job.id}" if kind is not None and kind.analysis else f"/v1/jobs/{job.id}"


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


@cache
def finished_job_model(kind: JobKind) -> type[JobOut]:
    """``JobOut`` with the kind's declared result type (e.g. ``LogitLensJobOut``), or ``JobOut`` itself."""
    if kind.result is None:
        return JobOut
    doc = f"A {kind.name} job; ``result`` once it succeeded."
    fields: Any = {"result": (kind.result | None, ...)}
    return create_model(f"{_camel(kind.name)}JobOut", __base__=JobOut, __doc__=doc, **fields)


@cache
def request_model(kind: JobKind) -> type[BaseModel]:
    """What a job route takes: the kind's payload and the ``model`` it is for (e.g. ``LogitLensRequest``)."""
    fields: Any = {"model": (str | None, Field(None, description=MODEL_FIELD, **MODEL_NAME))}
    doc = kind.payload.__doc__ or f"A {kind.name} request."
    return create_model(f"{_camel(kind.name)}Request", __base__=kind.payload, __doc__=doc, **fields)


@cache
def answer_model(kind: JobKind) -> type[BaseModel]:
    """What a query answers: its declared result and the ``job_id`` (e.g. ``ScoreOut``)."""
    if kind.result is None:
        raise ValueError(f"the query {kind.name!r} declares no result type")
    fields: Any = {"job_id": (str, ...)}
    return create_model(f"{_camel(kind.name)}Out", __base__=kind.result, **fields)


def edit_out(edit: Edit, history: Sequence[StateEvent]) -> EditOut:
    """The edit as the API shows it; ``history`` are its state events, oldest first."""
    request = edit.request or {}
    metrics = edit.metrics if isinstance(edit.metrics, dict) else None
    return EditOut(
        id=edit.id,
        status=edit.status,  # type: ignore[arg-type]
        url=edit_url(edit.id),
        base_model=edit.base_model,
        base_fingerprint=edit.base_fingerprint or None,
        prompt=edit.prompt,
        hop1_phrase=edit.hop1_phrase,
        bridge=edit.bridge,
        answer=edit.answer,
        inferred=Inferred(bridge=request.get("bridge") is None, answer=request.get("answer") is None),
        paraphrases=request.get("paraphrases") or [],
        generalization=request.get("generalization") or [],
        specificity=request.get("specificity") or [],
        layers=list(edit.layers) if edit.layers else None,
        answer_aliases=request.get("answer_aliases") or [],
        bridge_aliases=request.get("bridge_aliases") or [],
        method=edit.method,
        templates=request.get("templates") or "published",
        judge=request.get("judge") or "published",
        apply=edit.apply_policy,
        safety=metrics.get("safety") if metrics else None,
        metrics=metrics,
        delta_norms=metrics.get("delta_norms") if metrics else None,
        state_version=edit.computed_on_version,
        error=edit.error,
        actor=edit.actor,
        created_at=edit.created_at,
        updated_at=edit.updated_at,
        applied_at=edit.applied_at,
        reverted_at=edit.reverted_at,
        job_id=edit.job_id,
        imported=request.get("imported"),
        history=[
            EditEvent(action=e.action, actor=e.actor, at=e.created_at, state_version=e.version)  # type: ignore[arg-type]
            for e in history
        ],
    )


def job_out(job: Job) -> JobOut:
    return JobOut(
        id=job.id,
        kind=job.kind,  # type: ignore[arg-type]
        base_model=job.base_model,
        status=job.status,  # type: ignore[arg-type]
        url=job_url(job),
        payload=job.payload or {},
        progress=Progress.model_validate(job.progress or {}),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        cancel_requested=job.cancel_requested,
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


def model_out(status: ModelStatus) -> ModelOut:
    return ModelOut(
        base_model=status.base_model,
        served=status.served,
        family=status.family,
        dtype=status.dtype,
        n_layers=status.n_layers,
        fingerprint=status.fingerprint,
        state_version=status.state_version,
        active_edits=status.active_edits,
        pristine_bytes=status.pristine_bytes,
        workers=[
            WorkerOut(
                id=w.id,
                host=w.host,
                status=w.status,
                fingerprint=w.model_fingerprint,
                state_version=w.state_version,
                weights_checksum=w.weights_checksum,
                last_heartbeat=w.last_heartbeat,
                alive=w.alive,
                n_layers=w.n_layers,
                dtype=w.dtype,
                pristine_bytes=w.pristine_bytes,
            )
            for w in status.workers
        ],
        converged=status.converged,
    )


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem answers with these status codes."""
    from http import HTTPStatus

    ref = {"$ref": "#/components/schemas/Problem"}
    return {
        code: {
            "model": Problem,
            "description": HTTPStatus(code).phrase,
            "content": {"application/problem+json": {"schema": ref}},
        }
        for code in codes
    }
