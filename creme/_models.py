"""Typed results: frozen dataclasses of the fields the API returns.

Every result keeps the JSON object it was read from in ``raw``, so fields this client does not know
yet are still at hand, and a field the server leaves out takes its default instead of failing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

T = TypeVar("T")

JOB_DONE = ("succeeded", "failed", "cancelled")


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _build(cls: type[T], data: dict[str, Any], times: tuple[str, ...] = (), **converted: Any) -> T:
    """``cls`` from ``data``: its known fields, ``times`` as datetimes, ``converted`` as given."""
    names = {f.name for f in fields(cls)} - {"raw"}  # type: ignore[arg-type]
    values = {name: data[name] for name in names if name in data}
    values.update({name: _time(data.get(name)) for name in times}, **converted)
    return cls(**values, raw=data)


@dataclass(frozen=True)
class EditEvent:
    """One apply or revert of an edit, and the state version it produced."""

    action: str
    actor: str | None = None
    at: datetime | None = None
    state_version: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EditEvent:
        return _build(cls, data, times=("at",))


@dataclass(frozen=True)
class Edit:
    """An edit: its request, status (pending, computing, computed, applied, reverted, failed) and results."""

    id: str
    status: str
    url: str | None = None
    prompt: str | None = None
    hop1_phrase: str | None = None
    bridge: str | None = None
    answer: str | None = None
    inferred: dict[str, bool] | None = None  # whether bridge and answer are (to be) read from the model
    layers: list[int] | None = None
    method: str | None = None
    apply: str | None = None
    judge: str | None = None
    templates: str | list[str] | None = None
    paraphrases: list[str] = field(default_factory=list)
    generalization: list[dict[str, Any]] = field(default_factory=list)
    specificity: list[dict[str, Any]] = field(default_factory=list)
    answer_aliases: list[str] = field(default_factory=list)
    bridge_aliases: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    safety: dict[str, Any] | None = None
    delta_norms: Any = None
    error: dict[str, Any] | None = None
    state_version: int | None = None
    base_model: str | None = None
    base_fingerprint: str | None = None
    actor: str | None = None
    job_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    applied_at: datetime | None = None
    reverted_at: datetime | None = None
    history: list[EditEvent] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Edit:
        history = [EditEvent.from_json(event) for event in data.get("history") or []]
        times = ("created_at", "updated_at", "applied_at", "reverted_at")
        return _build(cls, data, times=times, history=history)


@dataclass(frozen=True)
class Job:
    """A job: kind, status (queued, running, succeeded, failed, cancelled), progress, result or error."""

    id: str
    status: str
    kind: str | None = None
    url: str | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    attempts: int | None = None
    max_attempts: int | None = None
    cancel_requested: bool = False
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job has finished (succeeded, failed or cancelled)."""
        return self.status in JOB_DONE

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        return _build(cls, data, times=("created_at", "started_at", "finished_at"))


@dataclass(frozen=True)
class StateChange:
    """The edit after an apply or revert, and the model-state version and active edits it produced."""

    edit: Edit
    version: int
    active_edits: list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateChange:
        state = data["state"]
        edit = Edit.from_json(data["edit"])
        return cls(edit=edit, version=state["version"], active_edits=state["active_edits"], raw=data)


@dataclass(frozen=True)
class WorkerState:
    """A worker as its heartbeat left it: the state version and weights it serves."""

    id: str
    host: str | None = None
    status: str | None = None
    fingerprint: str | None = None
    state_version: int | None = None
    weights_checksum: str | None = None
    last_heartbeat: datetime | None = None
    alive: bool = False
    n_layers: int | None = None
    dtype: str | None = None
    pristine_bytes: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerState:
        return _build(cls, data, times=("last_heartbeat",))


@dataclass(frozen=True)
class ModelState:
    """A base model: what it is, its desired state (``state_version``, ``active_edits``) and each worker's;
    ``converged`` iff all match."""

    base_model: str
    state_version: int
    served: bool = False
    family: str | None = None
    dtype: str | None = None
    n_layers: int | None = None
    fingerprint: str | None = None
    pristine_bytes: int | None = None
    active_edits: list[str] = field(default_factory=list)
    workers: list[WorkerState] = field(default_factory=list)
    converged: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelState:
        return _build(cls, data, workers=[WorkerState.from_json(w) for w in data.get("workers") or []])


@dataclass(frozen=True)
class LensToken:
    token: str
    token_id: int
    prob: float
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LensTarget:
    """A target's probability (mean over its sub-tokens) and 1-based rank at one layer."""

    target: str
    prob: float
    rank: int
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LensLayer:
    layer: int
    top: list[LensToken] = field(default_factory=list)
    targets: list[LensTarget] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LensLayer:
        top = [_build(LensToken, t) for t in data.get("top") or []]
        return _build(cls, data, top=top, targets=[_build(LensTarget, t) for t in data.get("targets") or []])


@dataclass(frozen=True)
class LensResult:
    """A logit lens: per layer, the top tokens and each target's probability and rank."""

    job_id: str
    prompt: str
    layers: list[LensLayer] = field(default_factory=list)
    position: int | None = None
    token: str | None = None
    apply_final_norm: bool | None = None
    targets: list[str] = field(default_factory=list)
    target_token_ids: list[list[int]] = field(default_factory=list)
    state_version: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_result(cls, result: dict[str, Any], job_id: str) -> LensResult:
        layers = [LensLayer.from_json(layer) for layer in result.get("layers") or []]
        return _build(cls, result, job_id=job_id, layers=layers)


@dataclass(frozen=True)
class LocateResult:
    """Locating: p(answer) of the failing run with one guide activation patched in, per layer, kind and position.

    ``table[i][j][k]`` is for ``layers[i]``, ``kinds[j]`` and ``positions[k]``.
    """

    job_id: str
    prompt: str
    guide_prompt: str | None = None
    bridge: str | None = None
    answer: str | None = None
    inferred: dict[str, bool] | None = None  # whether bridge and answer were read from the model
    answer_token_ids: list[int] = field(default_factory=list)
    window: int | None = None
    layers: list[int] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    positions: list[str] = field(default_factory=list)
    subject_tokens: list[str] = field(default_factory=list)
    baseline: float | None = None
    guide: float | None = None
    table: list[list[list[float]]] = field(default_factory=list)
    state_version: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_result(cls, result: dict[str, Any], job_id: str) -> LocateResult:
        return _build(cls, result, job_id=job_id)


@dataclass(frozen=True)
class Generation:
    """A greedy continuation on the current (edited) model."""

    text: str
    job_id: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_result(cls, result: dict[str, Any], job_id: str) -> Generation:
        return _build(cls, result, job_id=job_id)
