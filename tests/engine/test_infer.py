"""Bridge and answer inferred from the embedded model's own answers."""

from __future__ import annotations

import pytest

from service.engine.infer import InferenceError, entity, first_hop_cloze, infer_query
from service.engine.judging import is_correct
from service.engine.loading import LoadedModel
from tests.engine.helpers import failing_case


@pytest.mark.parametrize(
    ("continuation", "expected"),
    [
        (" Stephen King, who wrote it", "Stephen King"),
        (" the United States of America.\n\nIt", "the United States of America"),
        (" Tokyo.", "Tokyo"),
        ("", None),
        (" 1.\n\nThe answer is: 1", None),
        (" the\n", None),
        (" a city that lies on the coast of the sea and has many people", None),
    ],
)
def test_entity_is_the_first_clause_unless_trivial_or_rambling(continuation: str, expected: str | None) -> None:
    assert entity(continuation) == expected


def test_first_hop_cloze_capitalises_the_phrase() -> None:
    assert first_hop_cloze("the author of Misery") == "The author of Misery is"


@pytest.mark.parametrize("case_id", ["mquake-2hop-0394", "mquake-2hop-0295"])
def test_a_case_whose_hops_the_model_knows_infers_its_bridge_and_answer(smol: LoadedModel, case_id: str) -> None:
    case = failing_case(case_id)
    inferred = infer_query(smol, case.compositional, case.hop1_phrase)
    assert inferred.bridge_inferred and inferred.answer_inferred
    assert is_correct(inferred.query.bridge, case.bridge, aliases=case.bridge_aliases)
    assert is_correct(inferred.answer, case.answer, aliases=case.answer_aliases)
    assert inferred.record()["inferred"] == {"bridge": True, "answer": True}


def test_given_values_are_kept_and_not_marked_inferred(smol: LoadedModel) -> None:
    case = failing_case("mquake-2hop-0394")
    inferred = infer_query(smol, case.compositional, case.hop1_phrase, bridge=case.bridge, answer="Kyoto")
    assert (inferred.query.bridge, inferred.answer) == (case.bridge, "Kyoto")
    assert not inferred.bridge_inferred and not inferred.answer_inferred


def test_a_first_hop_the_model_cannot_answer_names_the_step(smol: LoadedModel) -> None:
    with pytest.raises(InferenceError) as caught:
        infer_query(smol, "The square of 1 2 3 4 is", "1 2 3 4")
    assert caught.value.step == "first hop" and "cannot infer the first hop" in str(caught.value)
