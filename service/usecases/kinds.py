"""Every job kind, declared once: its name, payload, result, where it is served and its validation.

The gateway derives from :data:`KINDS` the kind literals of its schemas, the routes of the
analyses (``POST /v1/analyses/<name>``) and queries (``POST /v1/<name>``), the validation of their
bodies and the URL of each job; a worker maps every declared kind to exactly one handler
(``workers/runner.py``) and parses a job's payload with the model declared here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from service.jobs import payloads as P
from service.usecases.validation import Limits, Loc, check_case, check_count, check_hop1, check_layers, error

Family = Literal["edit", "analysis", "query"]
Errors = list[dict[str, Any]]
PayloadCheck = Callable[[Any, Loc, Limits, Errors], None]


@dataclass(frozen=True)
class JobKind:
    """One kind of job.

    ``family`` says where it is served: ``edit`` by ``/v1/edits``; ``analysis`` by
    ``POST /v1/analyses/<name>``, its job read at ``/v1/analyses/<id>``; ``query`` by
    ``POST /v1/<name>``, answered with the result. ``result`` types the result in the API (None:
    a JSON object); ``check`` adds the rules a valid payload model cannot express, reporting into
    the error list.
    """

    name: str
    payload: type[BaseModel]
    family: Family
    summary: str
    result: type[BaseModel] | None = None
    check: PayloadCheck | None = None

    @property
    def analysis(self) -> bool:
        return self.family == "analysis"


def _check_locate(p: P.LocatePayload, loc: Loc, limits: Limits, errors: Errors) -> None:
    check_hop1(p.prompt, p.hop1_phrase, (*loc, "hop1_phrase"), errors)


def _check_intervention(p: P.InterventionPayload, loc: Loc, limits: Limits, errors: Errors) -> None:
    if p.hop1_phrase is not None:
        check_hop1(p.prompt, p.hop1_phrase, (*loc, "hop1_phrase"), errors)
    elif p.bridge is None or p.answer is None:
        msg = "is needed to infer the bridge and answer: give it, or both bridge and answer"
        errors.append(error((*loc, "hop1_phrase"), msg, "missing"))
    check_layers(p.layers, (*loc, "layers"), limits, errors)


def _check_compositionality(p: P.CompositionalityPayload, loc: Loc, limits: Limits, errors: Errors) -> None:
    check_count(len(p.cases), (*loc, "cases"), "cases", limits, errors)
    for i, case in enumerate(p.cases):
        check_case(case, (*loc, "cases", i), limits, errors)


_DECLARED = (
    JobKind("edit", P.EditPayload, "edit", "Compute, evaluate and apply an edit (submitted to /v1/edits)."),
    JobKind(
        "logit-lens",
        P.LogitLensPayload,
        "analysis",
        "Logit lens: what each layer's residual stream predicts, read out through the unembedding.",
        result=P.LogitLensResult,
    ),
    JobKind(
        "locate",
        P.LocatePayload,
        "analysis",
        "Locating: patch activations from the guide run into the failing run to find where to edit.",
        check=_check_locate,
    ),
    JobKind(
        "intervention",
        P.InterventionPayload,
        "analysis",
        "Intervention: suppress the bridge entity in the residual stream and watch p(answer).",
        check=_check_intervention,
    ),
    JobKind(
        "compositionality",
        P.CompositionalityPayload,
        "analysis",
        "The compositionality gap: cases whose single hops the model answers but whose composition fails.",
        check=_check_compositionality,
    ),
    JobKind(
        "generate",
        P.GeneratePayload,
        "query",
        "Greedy continuation of the prompt on the current (edited) model.",
        result=P.GenerateResult,
    ),
    JobKind(
        "score",
        P.ScorePayload,
        "query",
        "The probability of each answer after the prompt, on the current (edited) model.",
        result=P.ScoreResult,
    ),
)


def _by_name(kinds: tuple[JobKind, ...]) -> dict[str, JobKind]:
    named = {kind.name: kind for kind in kinds}
    if len(named) != len(kinds):
        raise ValueError("a job kind is declared twice")
    return named


KINDS: dict[str, JobKind] = _by_name(_DECLARED)
ANALYSIS_KINDS: tuple[str, ...] = tuple(name for name, kind in KINDS.items() if kind.analysis)


def kinds_of(family: Family) -> list[JobKind]:
    """The declared kinds of ``family``, in declaration order."""
    return [kind for kind in KINDS.values() if kind.family == family]
