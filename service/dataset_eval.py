"""`creme eval`: find the cases a model fails compositionally, then edit, evaluate and revert each one."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import median

from service.cases import TwoHopCase
from service.engine.compositionality import GapReport, check_cases
from service.engine.creme import CompositionalQuery, compute_edit, default_layers
from service.engine.evaluate import SET_NAMES, ProbeResult, evaluate_edit, summarise
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState

CaseCallback = Callable[["CaseOutcome"], None]


@dataclass(frozen=True)
class CaseOutcome:
    """One failing case edited, evaluated and reverted."""

    id: str
    prompt: str
    answer: str
    layers: list[int]
    edit_seconds: float
    probes: dict[str, list[ProbeResult]]

    def to_dict(self) -> dict:
        correction = self.probes["correction"][0]
        return {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "layers": self.layers,
            "edit_seconds": self.edit_seconds,
            "p_pre": correction.pre.p_answer,
            "p_post": correction.post.p_answer,
            "greedy_pre": correction.pre.continuation,
            "greedy_post": correction.post.continuation,
            "metrics": {name: summarise(results).to_dict() for name, results in self.probes.items()},
        }


def edit_and_evaluate(lm: LoadedModel, weights: WeightState, case: TwoHopCase, layers: Sequence[int]) -> CaseOutcome:
    """Compute the CREME edit of ``case``, evaluate it on its query sets; the model ends unchanged."""
    query = CompositionalQuery(prompt=case.compositional, hop1_phrase=case.hop1_phrase, bridge=case.bridge)
    started = time.perf_counter()
    result = compute_edit(lm, query, layers)
    seconds = time.perf_counter() - started
    evaluation = evaluate_edit(lm, weights, result.delta, case.eval_sets(), edited_answer=case.answer)
    return CaseOutcome(
        id=case.id,
        prompt=case.compositional,
        answer=case.answer,
        layers=list(layers),
        edit_seconds=seconds,
        probes=evaluation.probes,
    )


def evaluate_dataset(
    lm: LoadedModel,
    cases: Sequence[TwoHopCase],
    *,
    layers: Sequence[int] | None = None,
    on_gap: Callable[[GapReport], None] | None = None,
    on_case: CaseCallback | None = None,
) -> dict:
    """The report of ``creme eval``: a ``summary`` pooled over the failing cases and per-case ``cases``."""
    gap = check_cases(lm, cases, screen_hop1=True)
    if on_gap is not None:
        on_gap(gap)
    failing = [c for c in cases if c.id in set(gap.failing_ids)]
    chosen = list(layers) if layers else default_layers(lm)
    weights = WeightState(lm)
    outcomes: list[CaseOutcome] = []
    for case in failing:
        outcomes.append(edit_and_evaluate(lm, weights, case, chosen))
        if on_case is not None:
            on_case(outcomes[-1])
    pooled = {name: [r for o in outcomes for r in o.probes[name]] for name in SET_NAMES}
    summary = {
        "model": lm.name,
        "layers": chosen,
        "n_cases": len(cases),
        "n_failing": len(failing),
        "hop1_acc": gap.hop1_acc,
        "both_hops": gap.both_hops,
        "edit_seconds_median": median(o.edit_seconds for o in outcomes) if outcomes else None,
        **{name: summarise(results).to_dict() for name, results in pooled.items()},
    }
    return {"summary": summary, "cases": [o.to_dict() for o in outcomes]}
