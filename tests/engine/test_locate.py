"""Locating by activation patching: table shape, baselines, patching sanity and the layer choice."""

from __future__ import annotations

import json
import math
import time

import pytest

from service.engine.creme import CompositionalQuery
from service.engine.loading import LoadedModel
from service.engine.locate import (
    KINDS,
    POSITIONS,
    LocateResult,
    locate,
    subject_positions,
    suggest_layers,
    window_layers,
)
from service.engine.prompts import answer_probs, encode
from tests.engine.helpers import leaves_model_unchanged

FUJI = CompositionalQuery(
    prompt="The capital of the country where Mount Fuji is located is",
    hop1_phrase="the country where Mount Fuji is located",
    bridge="Japan",
)


@pytest.fixture(scope="module")
def fuji(smol: LoadedModel) -> LocateResult:
    started = time.perf_counter()
    with leaves_model_unchanged(smol):
        result = locate(smol, FUJI, "Tokyo")
    assert time.perf_counter() - started < 60
    return result


def test_table_shape_and_values(fuji: LocateResult, smol: LoadedModel) -> None:
    assert fuji.layers == tuple(range(smol.n_layers))
    assert len(fuji.table) == smol.n_layers
    assert all(
        len(row) == len(KINDS) == 3 and all(len(cells) == len(POSITIONS) == 2 for cells in row) for row in fuji.table
    )
    values = [p for row in fuji.table for cells in row for p in cells]
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in values)
    assert fuji.subject_tokens == (" located", " Japan")
    payload = json.loads(json.dumps(fuji.to_dict()))
    assert payload["kinds"] == ["hidden", "mlp", "attn"] and payload["positions"] == ["last", "subject"]
    assert len(payload["table"]) == 30 and len(payload["table"][0]) == 3 and len(payload["table"][0][0]) == 2


def test_baselines_equal_plain_forward(fuji: LocateResult, smol: LoadedModel) -> None:
    # Same batch composition as locate: the failing and the guide prompt left-padded together.
    expected = answer_probs(smol, [FUJI.prompt, FUJI.guide_prompt], ["Tokyo", "Tokyo"])
    assert fuji.baseline == pytest.approx(expected[0], abs=1e-5)
    assert fuji.guide == pytest.approx(expected[1], abs=1e-5)
    assert fuji.guide > fuji.baseline  # the model knows the second hop


def test_patching_the_last_hidden_state_gives_the_guide_run(fuji: LocateResult, smol: LoadedModel) -> None:
    last = smol.n_layers - 1
    assert fuji.patched(last, "hidden", "last") == pytest.approx(fuji.guide, abs=1e-4)
    # The subject position cannot reach the last position's logits once no layer is left.
    assert fuji.patched(last, "hidden", "subject") == pytest.approx(fuji.baseline, abs=1e-4)
    assert fuji.effect(last, "hidden", "last") == pytest.approx(fuji.guide - fuji.baseline, abs=1e-4)


def test_subject_positions_follow_padding(smol: LoadedModel) -> None:
    batch = encode(smol, [FUJI.prompt, FUJI.guide_prompt])
    fail, guide = subject_positions(smol, FUJI, batch)
    assert int(batch.attention_mask[1].sum()) < batch.input_ids.shape[1]  # the guide row is padded
    assert smol.tokenizer.decode([int(batch.input_ids[0, fail])]) == " located"
    assert smol.tokenizer.decode([int(batch.input_ids[1, guide])]) == " Japan"
    capitalised = CompositionalQuery(
        prompt="Mount Fuji's country has the capital", hop1_phrase="Mount Fuji's country", bridge="japan"
    )
    batch = encode(smol, [capitalised.prompt, capitalised.guide_prompt])
    fail, guide = subject_positions(smol, capitalised, batch)
    assert smol.tokenizer.decode([int(batch.input_ids[0, fail])]) == " country"
    assert smol.tokenizer.decode([int(batch.input_ids[1, guide])]) == "Japan"  # "Japan has the capital"
    assert guide == batch.input_ids.shape[1] - 4


def test_window_layers() -> None:
    assert list(window_layers(0, 6, 30)) == [0, 1, 2]
    assert list(window_layers(15, 6, 30)) == [12, 13, 14, 15, 16, 17]
    assert list(window_layers(29, 6, 30)) == [26, 27, 28, 29]
    assert list(window_layers(5, 1, 30)) == [5]


def test_suggest_layers_maximises_the_attention_effect(fuji: LocateResult) -> None:
    band = suggest_layers(fuji, 7)
    assert band == list(range(band[0], band[0] + 7))
    score = {s: sum(fuji.effect(layer) for layer in range(s, s + 7)) for s in range(30 - 6)}
    assert sum(fuji.effect(layer) for layer in band) == pytest.approx(max(score.values()))
    assert suggest_layers(fuji, 30) == list(range(30))
    with pytest.raises(ValueError):
        suggest_layers(fuji, 31)
    with pytest.raises(ValueError):
        suggest_layers(fuji, 0)


def test_layer_subset_matches_the_full_table(fuji: LocateResult, smol: LoadedModel) -> None:
    subset = locate(smol, FUJI, "Tokyo", layers=[20, 3])
    assert subset.layers == (3, 20)
    for layer in subset.layers:
        for kind in KINDS:
            for position in POSITIONS:
                assert subset.patched(layer, kind, position) == pytest.approx(
                    fuji.patched(layer, kind, position), abs=1e-5
                )
    assert suggest_layers(subset, 1) in ([3], [20])
    with pytest.raises(ValueError, match="consecutive"):
        suggest_layers(subset, 2)
    with pytest.raises(ValueError):
        locate(smol, FUJI, "Tokyo", layers=[30])


@pytest.mark.parametrize("fixture", ["tiny_llama", "tiny_gpt2"])
def test_locate_on_each_family(fixture: str, request: pytest.FixtureRequest) -> None:
    lm: LoadedModel = request.getfixturevalue(fixture)
    with leaves_model_unchanged(lm):
        result = locate(lm, FUJI, "Tokyo", window=2)
    assert len(result.table) == 4
    assert result.patched(3, "hidden", "last") == pytest.approx(result.guide, abs=1e-5)
    expected = answer_probs(lm, [FUJI.prompt, FUJI.guide_prompt], ["Tokyo", "Tokyo"])
    assert result.baseline == pytest.approx(expected[0], abs=1e-6)
