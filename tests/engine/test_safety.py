"""Safety readings on the embedded model: the drift probe (full, light, resumed) and early-stopped canaries."""

from __future__ import annotations

import pytest

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.judging import is_correct
from service.engine.loading import LoadedModel
from service.engine.methods import GUARD_DRIFT_WORDS, compute_with, method_spec
from service.engine.prompts import greedy
from service.engine.safety import DriftProbe, answered, shipped_facts
from service.engine.weights import WeightState
from tests.engine.helpers import failing_case

LAYERS = [10, 11, 12, 13, 14]


def _query(case_id: str) -> tuple[CompositionalQuery, str]:
    case = failing_case(case_id)
    return CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge), case.answer


@pytest.fixture(scope="module")
def ctx(smol: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> EditContext:
    return EditContext(smol, WeightState(smol), tmp_path_factory.mktemp("creme-cache"))


def test_a_resumed_drift_reading_equals_the_full_pass(ctx: EditContext) -> None:
    """Resuming at the lowest edited layer from the kept block inputs changes nothing but the time."""
    query, answer = _query("mquake-2hop-0394")
    delta = compute_with(ctx, query, LAYERS, method_spec("local"), answer=answer).delta
    probe = DriftProbe(ctx.lm, words=GUARD_DRIFT_WORDS, resume_layers=(LAYERS[0],))
    assert probe.kl() == pytest.approx(0.0, abs=1e-6)  # the state it was read on
    with ctx.weights.trial("resumed", delta):
        full, resumed = probe.kl(), probe.kl(from_layer=LAYERS[0])
    assert full > 1e-5
    assert resumed == pytest.approx(full, rel=1e-3)


def test_the_guard_sample_tracks_the_reported_drift(ctx: EditContext) -> None:
    """The guard's short sample reads each edit's drift near the full sample's and keeps their order."""
    query, answer = _query("mquake-2hop-0394")
    edits = {
        "local": compute_with(ctx, query, LAYERS, method_spec("local"), answer=answer).delta,
        "creme": compute_edit(ctx.lm, query, LAYERS).delta,
    }
    full, light = DriftProbe(ctx.lm), DriftProbe(ctx.lm, words=GUARD_DRIFT_WORDS)
    assert int(light.mask.sum()) < int(full.mask.sum()) / 3
    readings = {}
    for name, delta in edits.items():
        with ctx.weights.trial(name, delta):
            readings[name] = (full.kl(), light.kl())
    for name, (whole, guard) in readings.items():
        assert 0.5 * whole <= guard <= 2.0 * whole, (name, readings)
    assert readings["creme"][1] > 5 * readings["local"][1], readings


def test_canaries_stop_generating_once_settled_with_the_verdicts_of_full_continuations(ctx: EditContext) -> None:
    facts = shipped_facts()[:24]
    prompts = [f.prompt for f in facts]
    whole = greedy(ctx.lm, prompts, max_new_tokens=8)
    expected = [is_correct(t, f.answer, aliases=f.aliases) for t, f in zip(whole, facts, strict=True)]
    assert answered(ctx.lm, facts) == expected
    assert any(expected) and not all(expected)
    stops = [lambda text, a=f.answer: a.casefold() in text.casefold() for f in facts]
    stopped = greedy(ctx.lm, prompts, max_new_tokens=8, stop=stops)
    shorter = [s for s, w in zip(stopped, whole, strict=True) if len(s) < len(w)]
    assert shorter, "no row stopped early"
    for s, w in zip(stopped, whole, strict=True):
        assert w.startswith(s)


def test_greedy_wants_one_stop_check_per_prompt(smol: LoadedModel) -> None:
    with pytest.raises(ValueError, match="one stop check per prompt"):
        greedy(smol, ["The capital of France is", "The capital of Spain is"], stop=[lambda text: True])
