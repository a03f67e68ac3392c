"""The input rules the gateway and the engine share: the hop-1 matcher, the layer check, templates."""

from __future__ import annotations

import pytest

from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.hooks import select_layers
from service.engine.inputs import (
    EMBEDDED_MODEL,
    check_layers,
    default_band,
    default_template_set,
    find_phrase,
    layer_problem,
    template_problem,
    wider_band,
    wider_bands,
)
from service.engine.loading import LoadedModel
from service.engine.locate import subject_positions
from service.engine.prompts import encode

STRAIT = "The capital of the country north of the Straße of Hormuz is"


@pytest.mark.parametrize(
    ("phrase", "span"),
    [
        ("the Straße of Hormuz", (36, 56)),
        ("THE STRAẞE OF HORMUZ", (36, 56)),  # capital sharp s: the same letter, case by case
        ("the STRASSE of Hormuz", None),  # equal only under full case folding, which the engine does not do
        ("the strait of hormuz", None),
    ],
)
def test_find_phrase_ignores_case_letter_by_letter(phrase: str, span: tuple[int, int] | None) -> None:
    assert find_phrase(STRAIT, phrase) == span


def test_the_engine_uses_the_matcher_for_the_guide_prompt_and_the_subject(tiny_llama: LoadedModel) -> None:
    with pytest.raises(ValueError, match="does not occur"):
        CompositionalQuery(STRAIT, "the country north of the STRASSE of Hormuz", "Iran")
    query = CompositionalQuery(STRAIT, "THE COUNTRY north of the STRAẞE of hormuz", "Iran")
    assert query.guide_prompt == "The capital of Iran is"
    batch = encode(tiny_llama, [query.prompt, query.guide_prompt])
    fail, guide = subject_positions(tiny_llama, query, batch)
    decode = tiny_llama.tokenizer.decode
    assert (decode([int(batch.input_ids[0, fail])]), decode([int(batch.input_ids[1, guide])])) == ("uz", " Iran")


def test_one_layer_check_and_message(tiny_llama: LoadedModel) -> None:
    assert layer_problem(3, 4) is None and layer_problem(0, None) is None and layer_problem(10**6, None) is None
    assert layer_problem(4, 4) == "layer 4 is outside 0..3: the model has 4 layers"
    assert layer_problem(-1, None) == "layer -1 is negative; layers are numbered from 0"
    assert check_layers([2, 1, 2], 4) == [1, 2]
    for run in (
        lambda: check_layers([1, 4], 4),
        lambda: select_layers(tiny_llama, [1, 4]),
        lambda: compute_edit(tiny_llama, CompositionalQuery(STRAIT, "the Straße of Hormuz", "x"), [1, 4]),
    ):
        with pytest.raises(ValueError) as refused:
            run()
        assert str(refused.value) == "layer 4 is outside 0..3: the model has 4 layers"
    with pytest.raises(ValueError, match="at least one layer"):
        check_layers([], 4)


@pytest.mark.parametrize(
    ("template", "ok"),
    [("{}", True), ("Human: {}", True), ("{} {}", False), ("Q: {x} {}", False), ("{{}}", False), ("}{}", False)],
)
def test_a_template_must_take_the_prompt_and_nothing_else(template: str, ok: bool, tiny_llama: LoadedModel) -> None:
    assert (template_problem(template) is None) is ok
    if not ok:
        query = CompositionalQuery(STRAIT, "the Straße of Hormuz", "Iran")
        with pytest.raises(ValueError, match="exactly once and no other brace"):
            compute_edit(tiny_llama, query, [1], templates=["{}", template])


def test_default_band() -> None:
    assert default_band(EMBEDDED_MODEL, 30) == list(range(10, 21))
    assert default_band("llama-2-7b", 32) == list(range(17, 24))
    assert default_band("tiny", 4) == [2, 3]


def test_the_wider_bands_contain_the_default_one_each_wider_than_the_last_and_stay_in_the_model() -> None:
    assert wider_bands(EMBEDDED_MODEL, 30) == [list(range(8, 23)), list(range(6, 25))]
    assert wider_band(EMBEDDED_MODEL, 30) == list(range(6, 25))
    assert wider_bands("llama-2-7b", 32) == [list(range(15, 26)), list(range(13, 28))]
    assert wider_bands("tiny", 4) == [[1, 2, 3]] and wider_band("tiny", 4) == [1, 2, 3]
    assert wider_bands("m", 1) == [] and wider_band("m", 1) == default_band("m", 1)
    for depth in (1, 2, 3, 12, 24, 40, 80):
        inner = default_band("m", depth)
        for wider in wider_bands("m", depth):
            assert set(inner) < set(wider) and wider[0] >= 0 and wider[-1] < depth
            inner = wider
        assert wider_band("m", depth) == inner


def test_only_auto_on_the_embedded_model_defaults_to_the_english_templates() -> None:
    assert default_template_set("auto", EMBEDDED_MODEL) == "english"
    assert default_template_set("creme", EMBEDDED_MODEL) == "published"
    assert default_template_set("local", EMBEDDED_MODEL) == "published"
    assert default_template_set("auto", "llama-2-7b") == "published"
