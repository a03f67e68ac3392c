"""`creme eval`: find the cases a model fails compositionally, then edit and evaluate each one.

Alone (default), every edit is evaluated on the base model and reverted. With ``stack`` each edit
is computed on the model with the earlier ones applied and stays applied (every edit, or with the
``if_safe`` policy only those the safety check passes, as the service does); after 1, 5, 10, 20 and
all cases the report reads which applied edits still hold, the canary facts kept and the drift.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean, median
from typing import Literal

from service.engine.cases import TwoHopCase
from service.engine.compositionality import GapReport, check_cases
from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, default_layers, fallback_bands
from service.engine.evaluate import SET_NAMES, ProbeResult, evaluate_edit, summarise
from service.engine.judging import DEFAULT_RULE, JudgeRule
from service.engine.loading import LoadedModel
from service.engine.methods import MethodSpec, compute_with, method_spec
from service.engine.safety import Canary, DriftProbe, SafetyReport, answered, check_safety, known_facts
from service.engine.weights import WeightState

CaseCallback = Callable[["CaseOutcome"], None]
StackPolicy = Literal["always", "if_safe"]
STACK_CHECKPOINTS = (1, 5, 10, 20)


@dataclass(frozen=True)
class CaseOutcome:
    """One failing case edited and evaluated (on the state it was computed on); ``probes`` may be skipped."""

    id: str
    prompt: str
    answer: str
    layers: list[int]
    edit_seconds: float
    probes: dict[str, list[ProbeResult]]
    safety: SafetyReport
    params: dict

    @property
    def fixed(self) -> bool:
        if self.probes:
            return self.probes["correction"][0].post.correct
        return self.safety.fixes_own_query

    def to_dict(self) -> dict:
        out = {
            "id": self.id,
            "prompt": self.prompt,
            "answer": self.answer,
            "layers": self.layers,
            "edit_seconds": self.edit_seconds,
            "fixed": self.fixed,
            "params": self.params,
            "safety": self.safety.to_dict(),
        }
        if self.probes:
            correction = self.probes["correction"][0]
            out.update(
                p_pre=correction.pre.p_answer,
                p_post=correction.post.p_answer,
                greedy_pre=correction.pre.continuation,
                greedy_post=correction.post.continuation,
                metrics={name: summarise(results).to_dict() for name, results in self.probes.items()},
            )
        return out


def edit_and_evaluate(
    ctx: EditContext,
    case: TwoHopCase,
    layers: Sequence[int],
    spec: MethodSpec,
    rule: JudgeRule = DEFAULT_RULE,
    *,
    probes: bool = True,
    wider: Sequence[Sequence[int]] = (),
) -> tuple[CaseOutcome, object]:
    """Compute the edit of ``case`` on the current state, evaluate it and check its safety; nothing stays applied.

    Returns the outcome and the delta (to apply when stacking). ``probes=False`` skips the
    evaluation sets (the safety check still runs); ``wider``: the bands ``auto`` may fall back to.
    """
    query = CompositionalQuery(prompt=case.compositional, hop1_phrase=case.hop1_phrase, bridge=case.bridge)
    started = time.perf_counter()
    result = compute_with(
        ctx, query, layers, spec, answer=case.answer, answer_aliases=case.answer_aliases, rule=rule, wider_bands=wider
    )
    seconds = time.perf_counter() - started
    evaluated = {}
    if probes:
        evaluated = evaluate_edit(
            ctx.lm, ctx.weights, result.delta, case.eval_sets(), edited_answer=case.answer, rule=rule
        ).probes
    own = Canary(case.compositional, case.answer, case.answer_aliases)
    outcome = CaseOutcome(
        id=case.id,
        prompt=case.compositional,
        answer=case.answer,
        layers=result.delta.layers,
        edit_seconds=seconds,
        probes=evaluated,
        safety=check_safety(ctx, result.delta, own, rule),
        params=result.delta.params,
    )
    return outcome, result.delta


def _stack_reading(
    ctx: EditContext,
    attempted: int,
    edited: Sequence[TwoHopCase],
    facts: Sequence[Canary],
    drift: DriftProbe,
    rule: JudgeRule,
) -> dict:
    """Which applied edits' queries hold with all of them active, canaries kept, drift from the base model."""
    own = [Canary(c.compositional, c.answer, c.answer_aliases) for c in edited]
    holds = answered(ctx.lm, own, rule) if own else []
    kept = answered(ctx.lm, facts, rule)
    return {
        "n_cases": attempted,
        "n_edits": len(edited),
        "holding": sum(holds),
        "holding_ids": [c.id for c, ok in zip(edited, holds, strict=True) if ok],
        "canaries_kept": sum(kept),
        "canaries": len(facts),
        "generic_kl": drift.kl(),
    }


def evaluate_dataset(
    lm: LoadedModel,
    cases: Sequence[TwoHopCase],
    *,
    layers: Sequence[int] | None = None,
    spec: MethodSpec | None = None,
    rule: JudgeRule = DEFAULT_RULE,
    stack: bool = False,
    stack_policy: StackPolicy = "always",
    probes: bool = True,
    cache_dir: Path | None = None,
    gap: GapReport | None = None,
    on_gap: Callable[[GapReport], None] | None = None,
    on_case: CaseCallback | None = None,
    on_stack: Callable[[dict], None] | None = None,
) -> dict:
    """The report of ``creme eval``: a ``summary`` pooled over the failing cases and per-case ``cases``.

    ``gap`` reuses an earlier compositionality check of the same cases under the same rule;
    ``probes=False`` skips the evaluation sets (edits are still judged on their own query).
    """
    spec = spec or method_spec("auto", model=lm.name)
    gap = gap or check_cases(lm, cases, screen_hop1=True, rule=rule)
    if on_gap is not None:
        on_gap(gap)
    failing = [c for c in cases if c.id in set(gap.failing_ids)]
    chosen = list(layers) if layers else default_layers(lm)
    wider = [] if layers else fallback_bands(lm)  # auto may widen the default band, never a chosen one
    ctx = EditContext(lm, WeightState(lm), cache_dir)
    facts = known_facts(lm, cache_dir, rule)
    drift = DriftProbe(lm)
    outcomes: list[CaseOutcome] = []
    stacked: list[dict] = []
    applied: list[TwoHopCase] = []
    for i, case in enumerate(failing):
        outcome, delta = edit_and_evaluate(ctx, case, chosen, spec, rule, probes=probes, wider=wider)
        outcomes.append(outcome)
        if on_case is not None:
            on_case(outcome)
        if stack:
            if stack_policy == "always" or outcome.safety.safe:
                ctx.weights.apply(case.id, delta)  # type: ignore[arg-type]
                applied.append(case)
            if i + 1 in STACK_CHECKPOINTS or i + 1 == len(failing):
                stacked.append(_stack_reading(ctx, i + 1, applied, facts, drift, rule))
                if on_stack is not None:
                    on_stack(stacked[-1])
    ctx.weights.set_active([])
    pooled = {name: [r for o in outcomes for r in o.probes.get(name, ())] for name in SET_NAMES} if probes else {}
    summary = {
        "model": lm.name,
        "method": spec.name,
        "method_params": spec.params(),
        "judge": rule,
        "layers": chosen,
        "stacked": stack,
        "stack_policy": stack_policy if stack else None,
        "n_cases": len(cases),
        "n_failing": len(failing),
        "hop1_acc": gap.hop1_acc,
        "both_hops": gap.both_hops,
        "edit_seconds_median": median(o.edit_seconds for o in outcomes) if outcomes else None,
        "fixed": sum(o.fixed for o in outcomes),
        "canaries": len(facts),
        "canaries_kept_mean": fmean(o.safety.canaries.kept for o in outcomes) if outcomes else None,
        "all_canaries_kept": sum(not o.safety.canaries.regressions for o in outcomes),
        "safe": sum(o.safety.safe for o in outcomes),
        "generic_kl_mean": fmean(o.safety.generic_kl for o in outcomes) if outcomes else None,
        **{name: summarise(results).to_dict() for name, results in pooled.items()},
    }
    if stack:
        summary["stack"] = stacked
    return {"summary": summary, "cases": [o.to_dict() for o in outcomes]}
