"""The job contract between the gateway and the workers: one payload model per job kind.

The gateway validates a request, stores ``Payload.model_dump()`` in ``jobs.payload`` and enqueues
the job id; a worker parses it back with :func:`parse_payload`. Results are plain JSON objects.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProbeIn(_Payload):
    prompt: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class EditPayload(_Payload):
    """Compute, evaluate and (per ``apply``) activate the edit row ``edit_id``; the request is on the row."""

    edit_id: str


class LogitLensPayload(_Payload):
    prompt: str = Field(min_length=1)
    targets: list[str] = Field(default_factory=list)
    top_k: StrictInt = Field(5, ge=1, le=50)
    apply_final_norm: bool = True


class LocatePayload(_Payload):
    prompt: str = Field(min_length=1)
    hop1_phrase: str = Field(min_length=1)
    bridge: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    window: StrictInt = Field(6, ge=1, le=64)


class InterventionPayload(_Payload):
    prompt: str = Field(min_length=1)
    bridge: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    layers: list[StrictInt] | None = None
    compensate: bool = True


class CompositionalityPayload(_Payload):
    """Cases in the JSONL dataset format (``service.engine.cases.TwoHopCase.from_dict``)."""

    cases: list[dict[str, Any]] = Field(min_length=1)


class GeneratePayload(_Payload):
    prompt: str = Field(min_length=1)
    max_new_tokens: StrictInt = Field(16, ge=1, le=256)


class ScorePayload(_Payload):
    prompt: str = Field(min_length=1)
    answers: list[str] = Field(min_length=1)


JobKind = Literal["edit", "logit-lens", "locate", "intervention", "compositionality", "generate", "score"]

PAYLOADS: dict[str, type[_Payload]] = {
    "edit": EditPayload,
    "logit-lens": LogitLensPayload,
    "locate": LocatePayload,
    "intervention": InterventionPayload,
    "compositionality": CompositionalityPayload,
    "generate": GeneratePayload,
    "score": ScorePayload,
}


def parse_payload(kind: str, payload: dict[str, Any]) -> _Payload:
    """The typed payload of a stored job; ``KeyError`` for an unknown kind, ``ValidationError`` if malformed."""
    return PAYLOADS[kind].model_validate(payload)
