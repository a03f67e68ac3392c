"""Evaluation metrics: aggregation rules on known readings, and a real edit evaluated on the embedded model."""

from __future__ import annotations

import pytest
import torch

from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.evaluate import (
    EvalSets,
    Probe,
    ProbeResult,
    Reading,
    evaluate_edit,
    summarise,
)
from service.engine.judging import is_correct
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from tests.engine.helpers import failing_case


def _reading(p: float, p_rival: float, correct: bool, leak: float | None = None) -> Reading:
    return Reading(p_answer=p, rival="x", p_rival=p_rival, continuation="", correct=correct, p_leak=leak)


def test_summarise_aggregates_as_defined() -> None:
    results = [
        ProbeResult("a", "A", pre=_reading(0.1, 0.2, False, 0.01), post=_reading(0.3, 0.1, True, 0.02)),
        ProbeResult("b", "B", pre=_reading(0.4, 0.1, True, 0.10), post=_reading(0.2, 0.3, False, 0.10)),
    ]
    m = summarise(results)
    assert m.n == 2
    assert m.mean_rel_change == pytest.approx(((0.3 - 0.1) / 0.1 + (0.2 - 0.4) / 0.4) / 2)
    assert m.share_increased == 0.5
    assert (m.win_rate_pre, m.win_rate_post) == (0.5, 0.5)
    assert (m.greedy_acc_pre, m.greedy_acc_post) == (0.5, 0.5)
    assert m.leakage_mean_rel_change == pytest.approx(((0.02 - 0.01) / 0.01 + 0.0) / 2)
    assert summarise([]).n == 0 and summarise([]).win_rate_pre is None


@pytest.mark.parametrize(
    ("text", "answer", "expected"),
    [
        (" Tokyo.", "Tokyo", True),
        (" the United States of America", "United States of America", True),
        (" The Hague is", "the Hague", True),
        (" Japan, whose capital", "Tokyo", False),
        ("", "Tokyo", False),
    ],
)
def test_strict_greedy_accuracy_rule(text: str, answer: str, expected: bool) -> None:
    assert is_correct(text, answer, rule="strict") is expected


def test_real_edit_is_evaluated_and_undone(smol: LoadedModel) -> None:
    case = failing_case("mquake-2hop-0394")
    query = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
    delta = compute_edit(smol, query, list(range(10, 21))).delta
    weights = WeightState(smol)
    checksum = weights.checksum()
    sets = case.eval_sets()
    sets = EvalSets(
        correction=sets.correction,
        paraphrase=sets.paraphrase,
        specificity=sets.specificity[:3],
        generalization=(Probe("The capital of Japan is", "Tokyo"),),
    )
    evaluation = evaluate_edit(smol, weights, delta, sets, edited_answer=case.answer)
    assert weights.checksum() == checksum and weights.active_ids == []
    correction = evaluation.sets["correction"]
    assert correction.n == 1 and correction.share_increased == 1.0
    assert correction.greedy_acc_pre == 0.0 and correction.greedy_acc_post == 1.0
    assert evaluation.improved
    specificity = evaluation.sets["specificity"]
    assert specificity.n == 3 and specificity.leakage_pre_mean is not None
    rival = evaluation.probes["correction"][0].pre.rival
    assert rival and not is_correct(rival, case.answer)
    assert evaluation.probes["correction"][0].post.rival == rival  # fixed before the edit
    payload = evaluation.to_dict()
    assert set(payload["sets"]) == {"correction", "paraphrase", "generalization", "specificity"}
    assert all(torch.isfinite(torch.tensor(v)) for v in payload["sets"]["correction"].values() if v is not None)
