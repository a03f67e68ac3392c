"""Logit lens: the last layer reproduces the model's logits; results are well formed on every family."""

from __future__ import annotations

import json
import math

import pytest
import torch

from service.engine.lens import format_lens_table, lens_logits, logit_lens, mean_rank
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_probs, answer_token_ids, encode
from tests.engine.helpers import leaves_model_unchanged

FUJI = "The capital of the country where Mount Fuji is located is"


@pytest.mark.parametrize("fixture", ["smol", "tiny_llama", "tiny_gpt2"])
def test_last_layer_lens_equals_model_logits(fixture: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(fixture)
    with leaves_model_unchanged(lm):
        logits, position, _ = lens_logits(lm, FUJI)
    with torch.no_grad():
        expected = lm.model(**encode(lm, [FUJI]).model_inputs(), use_cache=False).logits[0, -1]
    assert logits.shape == (lm.n_layers, expected.shape[-1])
    assert position == encode(lm, [FUJI]).input_ids.shape[1] - 1
    assert torch.allclose(logits[-1], expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_lens_runs_on_each_family(fixture: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(fixture)
    with leaves_model_unchanged(lm):
        result = logit_lens(lm, FUJI, ["Japan", "Tokyo"], top_k=3)
    assert [entry.layer for entry in result.layers] == list(range(4))
    assert all(len(entry.top) == 3 and len(entry.targets) == 2 for entry in result.layers)
    json.dumps(result.to_dict())


def test_fuji_lens_is_well_formed(smol: LoadedModel) -> None:
    with leaves_model_unchanged(smol):
        result = logit_lens(smol, FUJI, ["Japan", "Tokyo"])
    assert len(result.layers) == smol.n_layers == 30
    assert result.token == " is" and result.apply_final_norm
    for entry in result.layers:
        probs = [t.prob for t in entry.top]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs)
        for stat in entry.targets:
            assert 0.0 <= stat.prob <= 1.0 and math.isfinite(stat.prob)
            assert 1.0 <= stat.rank <= len(smol.tokenizer)
    # The last layer's lens is the model's own next-token distribution.
    last = {s.target: s.prob for s in result.layers[-1].targets}
    expected = answer_probs(smol, [FUJI, FUJI], ["Japan", "Tokyo"])
    assert last["Japan"] == pytest.approx(expected[0], abs=1e-5)
    assert last["Tokyo"] == pytest.approx(expected[1], abs=1e-5)
    assert result.layers[-1].top[0].token_id == int(smol.tokenizer(" a", add_special_tokens=False)["input_ids"][0])
    payload = json.loads(json.dumps(result.to_dict()))
    assert payload["targets"] == ["Japan", "Tokyo"] and len(payload["layers"]) == 30


def test_ranks_are_integers_rounded_from_the_sub_token_mean(smol: LoadedModel) -> None:
    targets = ["Japan", "Daisuke Sasaki"]  # one token, several tokens
    ids = [answer_token_ids(smol, t) for t in targets]
    assert len(ids[0]) == 1 and len(ids[1]) > 1
    result = logit_lens(smol, FUJI, targets)
    logits, _, _ = lens_logits(smol, FUJI)
    for entry, layer_logits in zip(result.layers, logits, strict=True):
        for stat, token_ids in zip(entry.targets, ids, strict=True):
            ranks = [int((layer_logits > layer_logits[i]).sum()) + 1 for i in token_ids]
            assert type(stat.rank) is int and stat.rank == math.floor(sum(ranks) / len(ranks) + 0.5)
    payload = json.loads(json.dumps(result.to_dict()))
    assert all(type(s["rank"]) is int for layer in payload["layers"] for s in layer["targets"])
    assert [mean_rank(r) for r in ([7], [1, 2], [1, 1, 2], [2, 3, 3, 3])] == [7, 2, 1, 3]


def test_lens_without_final_norm_and_other_positions(smol: LoadedModel) -> None:
    normed, _, _ = lens_logits(smol, FUJI)
    raw, _, _ = lens_logits(smol, FUJI, apply_final_norm=False)
    assert torch.isfinite(raw).all() and not torch.allclose(raw[-1], normed[-1])
    first = logit_lens(smol, FUJI, ["Japan"], position=0, top_k=1)
    assert first.position == 0 and first.token == "The"
    with pytest.raises(ValueError, match="outside"):
        logit_lens(smol, FUJI, position=100)
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(smol, FUJI, top_k=0)


def test_format_lens_table(smol: LoadedModel) -> None:
    result = logit_lens(smol, FUJI, ["Japan", "Tokyo"])
    table = format_lens_table(result)
    lines = table.splitlines()
    assert len(lines) == 3 + smol.n_layers
    assert "p(Japan)" in lines[1] and "p(Tokyo)" in lines[1]
    assert {len(line) for line in lines[1:]} == {len(lines[1])}  # fixed width
    assert lines[-1].split()[0] == "29"
    assert all(cell.isdigit() for line in lines[3:] for cell in line.split()[-3::2])  # the ranks are integers
