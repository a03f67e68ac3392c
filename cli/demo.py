"""``creme demo``: find a two-hop question the model gets wrong, patch it, check the patch, and revert it exactly.

Everything runs on the model in this process with the engine (no service): the shipped demo cases
(``service/engine/data/demo_cases.jsonl``, MQuAKE-derived) are checked greedily, the first one the
model fails compositionally while answering both hops is edited with the default method, applied,
read again with its canary facts, and reverted; the weights' checksum shows the revert is exact.
"""

from __future__ import annotations

import sys
import time
from importlib import resources
from pathlib import Path

from cli.common import first_line, fmt_p
from service.engine.cases import TwoHopCase, load_cases
from service.engine.compositionality import check_cases
from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, default_layers, fallback_bands
from service.engine.judging import is_correct
from service.engine.loading import LoadedModel
from service.engine.methods import compute_with, method_spec
from service.engine.options import DEFAULT_METHOD
from service.engine.prompts import answer_probs, greedy
from service.engine.safety import Canary, check_safety
from service.engine.weights import WeightState

ANSWER_TOKENS = 10  # as the compositionality check reads them
EDIT_ID = "demo"


def demo_cases() -> list[TwoHopCase]:
    """The shipped demo cases."""
    with resources.as_file(resources.files("service.engine").joinpath("data/demo_cases.jsonl")) as path:
        return load_cases(Path(path))


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _progress(text: str) -> None:
    print(f"   … {text}", file=sys.stderr, flush=True)


def _said(prompt: str, text: str, answer: str, aliases: tuple[str, ...] = ()) -> str:
    """'prompt' → 'first line of text'  ✓/✗ (judged against ``answer``)."""
    verdict = "✓" if is_correct(text, answer, aliases=aliases) else f"✗ (right: {answer})"
    return f"   {prompt!r} → {first_line(text)!r}  {verdict}"


def run_demo(lm: LoadedModel, cache_dir: Path | None) -> int:
    """The demo on ``lm`` (left as it was loaded); 0 once a case was patched and reverted, 1 if none fails."""
    weights = WeightState(lm)
    pristine = weights.checksum()
    cases = demo_cases()
    _step(f"1. Looking for a question {lm.name} gets wrong although it knows both hops ({len(cases)} shipped cases)")
    gap = check_cases(lm, cases, screen_hop1=True, max_new_tokens=ANSWER_TOKENS)
    if not gap.failing_ids:
        print("creme demo: the model fails none of the demo cases compositionally: nothing to patch", file=sys.stderr)
        return 1
    case = next(c for c in cases if c.id == gap.failing_ids[0])
    hop1, hop2, wrong = greedy(lm, [case.hop1_cloze, case.hop2, case.compositional], max_new_tokens=ANSWER_TOKENS)
    print(f"   {case.id}: the model answers each hop right,")
    print(_said(case.hop1_cloze, hop1, case.bridge, case.bridge_aliases))
    print(_said(case.hop2, hop2, case.answer, case.answer_aliases))
    print("   but not the question that chains them:")
    print(_said(case.compositional, wrong, case.answer, case.answer_aliases))
    print(f"   wrong answer: {first_line(wrong)!r}")

    layers = default_layers(lm)
    _step(f"2. Patching it: method {DEFAULT_METHOD}, layers {layers[0]}-{layers[-1]} (bridge entity: {case.bridge})")
    ctx = EditContext(lm, weights, cache_dir)
    query = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
    started = time.perf_counter()
    spec = method_spec(DEFAULT_METHOD, model=lm.name)
    result = compute_with(
        ctx, query, layers, spec, answer=case.answer, answer_aliases=case.answer_aliases,
        wider_bands=fallback_bands(lm), progress=lambda step, total, message: _progress(f"{message} ({step}/{total})"),
    )  # fmt: skip
    seconds, gain = time.perf_counter() - started, result.delta.params.get("gain", 1.0)
    edited = result.delta.layers
    print(f"   computed in {seconds:.1f} s: changes to {len(edited)} attention output matrices (gain {gain:g})")

    _step("3. Checking it as `apply: if_safe` does, then applying it")
    safety = check_safety(ctx, result.delta, Canary(case.compositional, case.answer, case.answer_aliases))
    canaries = safety.canaries
    print(
        f"   canary facts still right: {canaries.kept}/{canaries.n_checked}; generic-text drift "
        f"{safety.generic_kl:.4f} nats/token; {'safe to apply' if safety.safe else 'not safe to apply'}"
    )
    [p_before] = answer_probs(lm, [case.compositional], [case.answer])
    weights.apply(EDIT_ID, result.delta)
    patched = weights.checksum()
    [fixed] = greedy(lm, [case.compositional], max_new_tokens=ANSWER_TOKENS)
    [p_after] = answer_probs(lm, [case.compositional], [case.answer])
    print(_said(case.compositional, fixed, case.answer, case.answer_aliases))
    if is_correct(fixed, case.answer, aliases=case.answer_aliases):
        print(f"   fixed answer: {first_line(fixed)!r}")
    else:
        print("   the patch does not fix it")
    print(f"   p({case.answer}) {fmt_p(p_before)} → {fmt_p(p_after)}")

    _step("4. Reverting it")
    weights.revert(EDIT_ID)
    reverted = weights.checksum()
    [again] = greedy(lm, [case.compositional], max_new_tokens=ANSWER_TOKENS)
    print(_said(case.compositional, again, case.answer, case.answer_aliases))
    print("   sha256 of every attention output weight:")
    for label, checksum in (("as loaded", pristine), ("patched", patched), ("reverted", reverted)):
        print(f"     {label:<10} {checksum}")
    if reverted != pristine:
        print("creme demo: the weights differ from the loaded ones after the revert", file=sys.stderr)
        return 1
    print("   the weights are bit-identical to the loaded ones again")
    return 0
