"""The job contract between the gateway and the workers: the payload of each job kind, and the
results the API documents.

The gateway validates a request, stores ``Payload.model_dump()`` in ``jobs.payload`` and enqueues
the job id; a worker parses it back with the payload model its kind declares
(:mod:`service.usecases.kinds`). Results are JSON objects; those with a model here are typed in the API.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt

INFERRED = "; null: the worker infers it from the model's own answers."


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    bridge: str | None = Field(None, min_length=1, description="The bridge entity" + INFERRED)
    answer: str | None = Field(None, min_length=1, description="The correct final answer" + INFERRED)
    window: StrictInt = Field(6, ge=1, le=64)


class InterventionPayload(_Payload):
    prompt: str = Field(min_length=1)
    bridge: str | None = Field(None, min_length=1, description="The bridge entity to suppress" + INFERRED)
    answer: str | None = Field(None, min_length=1, description="The answer whose probability is watched" + INFERRED)
    hop1_phrase: str | None = Field(
        None, min_length=1, description="The first-hop phrase; needed only when bridge or answer is inferred."
    )
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


# -- results -------------------------------------------------------------------------------


class LensToken(BaseModel):
    token: str
    token_id: int
    prob: float


class LensTarget(BaseModel):
    target: str
    prob: float = Field(description="Probability, averaged over the target's sub-tokens.")
    rank: int = Field(ge=1, description="1-based rank, averaged over the target's sub-tokens and rounded (halves up).")


class LensLayer(BaseModel):
    layer: int
    top: list[LensToken]
    targets: list[LensTarget]


class LogitLensResult(BaseModel):
    """What each layer's residual stream at ``position`` predicts, read out through the unembedding."""

    prompt: str
    position: int
    token: str
    apply_final_norm: bool
    targets: list[str]
    target_token_ids: list[list[int]]
    layers: list[LensLayer]
    state_version: int


class AnswerProbability(BaseModel):
    answer: str
    probability: float


class ScoreResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    answers: list[AnswerProbability]


class GenerateResult(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str
