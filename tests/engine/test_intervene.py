"""Intervention: the o1-suppression shift, its random control, baselines and a model left untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.engine.intervene import InterventionResult, control_ids, intervene, suppression_shift
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_probs, answer_token_ids
from tests.engine.helpers import leaves_model_unchanged

FUJI = "The capital of the country where Mount Fuji is located is"


@pytest.fixture(scope="module")
def fuji(smol: LoadedModel) -> InterventionResult:
    with leaves_model_unchanged(smol):
        return intervene(smol, FUJI, "Japan", "Tokyo")


def test_result_is_well_formed(fuji: InterventionResult, smol: LoadedModel) -> None:
    assert [e.layer for e in fuji.layers] == list(range(smol.n_layers))
    for entry in fuji.layers:
        for p in (entry.baseline, entry.suppressed, entry.control):
            assert math.isfinite(p) and 0.0 <= p <= 1.0
    assert fuji.bridge_token_ids == tuple(answer_token_ids(smol, "Japan"))
    assert fuji.answer_token_ids == tuple(answer_token_ids(smol, "Tokyo"))
    assert len(fuji.control_token_ids) == len(fuji.bridge_token_ids)
    assert not set(fuji.control_token_ids) & {*fuji.bridge_token_ids, *fuji.answer_token_ids}
    payload = json.loads(json.dumps(fuji.to_dict()))
    assert len(payload["layers"]) == 30 and payload["compensate"] is True


def test_baseline_equals_plain_forward_on_every_layer(fuji: InterventionResult, smol: LoadedModel) -> None:
    assert len({e.baseline for e in fuji.layers}) == 1
    assert fuji.layers[0].baseline == pytest.approx(answer_probs(smol, [FUJI], ["Tokyo"])[0], abs=1e-5)


def test_layer_subset_and_seed(fuji: InterventionResult, smol: LoadedModel) -> None:
    subset = intervene(smol, FUJI, "Japan", "Tokyo", layers=[21, 4])
    assert [e.layer for e in subset.layers] == [4, 21]
    for entry in subset.layers:
        full = fuji.layers[entry.layer]
        assert entry.suppressed == pytest.approx(full.suppressed, abs=1e-6)
        assert entry.control == pytest.approx(full.control, abs=1e-6)
    assert subset.control_token_ids == fuji.control_token_ids  # same seed, same control
    with pytest.raises(ValueError):
        intervene(smol, FUJI, "Japan", "Tokyo", layers=[-1])


def test_control_ids_are_seeded_and_exclusive() -> None:
    first = control_ids(100, 5, [0, 1, 2], seed=3)
    assert first == control_ids(100, 5, [0, 1, 2], seed=3)
    assert len(set(first)) == 5 and not set(first) & {0, 1, 2}
    assert control_ids(6, 3, [0, 1, 2], seed=9) == [3, 4, 5]
    with pytest.raises(ValueError):
        control_ids(4, 3, [0, 1], seed=0)


def test_suppression_shift_is_exact_when_the_unembedding_is_invertible() -> None:
    # With vocab <= d_model, W_U pinv(W_U) = I: o1 lands exactly on the minimum logit and the
    # compensation restores o2's logits exactly.
    generator = torch.Generator().manual_seed(0)
    w_u = torch.randn(8, 16, generator=generator, dtype=torch.float64)  # [vocab, d_model]
    pinv = torch.linalg.pinv(w_u)
    h = torch.randn(16, generator=generator, dtype=torch.float64)
    v = w_u @ h
    plain = w_u @ (h + suppression_shift(w_u, pinv, h, [2, 5], [1], compensate=False, scale=1.0))
    assert torch.allclose(plain[[2, 5]], v.min().expand(2))
    kept = w_u @ (h + suppression_shift(w_u, pinv, h, [2, 5], [1], compensate=True, scale=1.0))
    assert torch.allclose(kept[[2, 5]], v.min().expand(2)) and torch.allclose(kept[1], v[1])
    half = w_u @ (h + suppression_shift(w_u, pinv, h, [2], [1], compensate=True, scale=0.5))
    no_comp = w_u @ (h + suppression_shift(w_u, pinv, h, [2], [1], compensate=False, scale=1.0))
    assert torch.allclose(half[1], (v[1] + no_comp[1]) / 2)


def test_suppression_lowers_the_bridge_logit_on_the_real_model(smol: LoadedModel) -> None:
    w_u = smol.adapter.unembedding(smol.model).double()
    pinv = smol.unembed_pinv()
    assert pinv.dtype == torch.float64 and pinv.shape == (w_u.shape[1], w_u.shape[0])
    h = torch.randn(w_u.shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    o1 = answer_token_ids(smol, "Japan")
    shift = suppression_shift(w_u, pinv, h, o1, answer_token_ids(smol, "Tokyo"), compensate=True, scale=1.0)
    assert shift.dtype == torch.float64 and shift.shape == h.shape
    assert ((w_u @ (h + shift))[o1] < (w_u @ h)[o1]).all()


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_intervene_on_each_family(fixture: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(fixture)
    with leaves_model_unchanged(lm):
        result = intervene(lm, FUJI, "Japan", "Tokyo", compensate=False)
    assert len(result.layers) == 4
    assert result.layers[0].baseline == pytest.approx(answer_probs(lm, [FUJI], ["Tokyo"])[0], abs=1e-6)
    assert all(math.isfinite(e.suppressed) and math.isfinite(e.control) for e in result.layers)
