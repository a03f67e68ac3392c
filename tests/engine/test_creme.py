"""CREME edits on the embedded model: the edit helps, both schedules agree, the model is left alone."""

from __future__ import annotations

import pytest
import torch

from service.engine.creme import (
    CompositionalQuery,
    EditCancelled,
    compute_edit,
    default_layers,
)
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_probs
from service.engine.weights import WeightState
from tests.engine.helpers import failing_case


def _query(case_id: str = "mquake-2hop-0394") -> tuple[CompositionalQuery, str]:
    case = failing_case(case_id)
    return CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge), case.answer


def _params(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in lm.model.named_parameters()}


def test_guide_prompt_replaces_hop1_phrase() -> None:
    query = CompositionalQuery(
        "The capital of the country where Mount Fuji is is", "the country where Mount Fuji is", "Japan"
    )
    assert query.guide_prompt == "The capital of Japan is"
    leading = CompositionalQuery("The author of Misery is a citizen of", "the author of Misery", "stephen King")
    assert leading.guide_prompt == "Stephen King is a citizen of"


@pytest.mark.parametrize(
    ("prompt", "phrase", "bridge", "message"),
    [
        ("The capital of X is", "the country of Y", "Z", "does not occur"),
        ("The capital of X is", " ", "Z", "must not be empty"),
        ("   ", "X", "Z", "must not be empty"),
    ],
)
def test_bad_queries_are_rejected(prompt: str, phrase: str, bridge: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CompositionalQuery(prompt, phrase, bridge)


@pytest.mark.parametrize("case_id", ["mquake-2hop-0394", "mquake-2hop-0072"])
def test_edit_raises_probability_of_answer(smol: LoadedModel, case_id: str) -> None:
    query, answer = _query(case_id)
    weights = WeightState(smol)
    before = answer_probs(smol, [query.prompt], [answer])[0]
    result = compute_edit(smol, query, default_layers(smol))
    with weights.trial("e", result.delta):
        after = answer_probs(smol, [query.prompt], [answer])[0]
    assert after > before * 1.5, (before, after)


def test_schedules_agree_and_model_is_unchanged(smol: LoadedModel) -> None:
    query, _ = _query()
    before = _params(smol)
    layers = [8, 10, 11, 14]
    fast = compute_edit(smol, query, layers, schedule="fast").delta
    reference = compute_edit(smol, query, layers, schedule="reference").delta
    assert fast.layers == reference.layers == layers
    for f, r in zip(fast.factors, reference.factors, strict=True):
        for a, b in ((f.u, r.u), (f.r, r.r)):
            assert float((a - b).norm() / b.norm()) < 1e-4
    after = _params(smol)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_edited_layers_map_mean_key_to_guide_value(smol: LoadedModel) -> None:
    query, _ = _query()
    result = compute_edit(smol, query, [12, 13, 14])
    assert [r.layer for r in result.reports] == [12, 13, 14]
    for report in result.reports:
        assert report.fit_residual < 1e-4
        assert report.value_shift_norm > 0


def test_cancel_and_failure_leave_model_unchanged(smol: LoadedModel) -> None:
    query, _ = _query()
    before = _params(smol)
    calls = iter([False, False, True])
    with pytest.raises(EditCancelled):
        compute_edit(smol, query, [10, 11, 12, 13], should_cancel=lambda: next(calls))
    with pytest.raises(ValueError, match="outside"):
        compute_edit(smol, query, [10, 99])
    after = _params(smol)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in smol.model.modules())


def test_progress_is_reported_per_layer(smol: LoadedModel) -> None:
    query, _ = _query()
    seen: list[tuple[int, int, str]] = []
    compute_edit(smol, query, [5, 6], progress=lambda step, total, msg: seen.append((step, total, msg)))
    assert [(s, t) for s, t, _ in seen] == [(1, 2), (2, 2)]


def test_default_layers_fit_the_model(smol: LoadedModel, tiny_llama: LoadedModel) -> None:
    assert default_layers(smol) == list(range(10, 21))
    tiny = default_layers(tiny_llama)
    assert tiny and all(0 <= layer < tiny_llama.n_layers for layer in tiny)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_tiny_architectures_edit_and_revert_exactly(fixture: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(fixture)
    query = CompositionalQuery("The capital of the land of Fuji is", "the land of Fuji", "Japan")
    before = _params(lm)
    fast = compute_edit(lm, query, [1, 2], schedule="fast").delta
    reference = compute_edit(lm, query, [1, 2], schedule="reference").delta
    for f, r in zip(fast.factors, reference.factors, strict=True):
        assert float((f.r - r.r).norm() / r.r.norm()) < 1e-4
    weights = WeightState(lm)
    weights.apply("e", fast)
    changed = lm.adapter.out_proj_module(lm.model, 1).weight
    assert not torch.equal(changed, before[lm.adapter.out_proj_name(1)])
    weights.revert("e")
    after = _params(lm)
    assert all(torch.equal(before[name], after[name]) for name in before)
