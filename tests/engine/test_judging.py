"""The judging rules: the published filter (default, guarded) and the strict prefix rule, with aliases."""

from __future__ import annotations

import pytest

from service.engine.judging import is_correct, settled_right


@pytest.mark.parametrize(
    ("text", "answer", "expected"),
    [
        (" Tokyo.\n\nThe Japanese", "Tokyo", True),  # the answer in the first line
        (" the capital, Tokyo, is big", "Tokyo", True),
        (" United States.", "United States of America", True),  # the prediction inside the answer
        (" Japan.\nTokyo", "Tokyo", False),  # only the first line counts
        (" France", "Tokyo", False),
        ("", "Tokyo", False),
        ("\n\nTokyo", "Tokyo", True),  # leading blank lines are not the first line
        (" the", "the Hague", False),  # a lone article never counts
        (" A.", "A Coruña", False),  # nor one or two letters
        (" Un", "United States of America", False),
        (" TOKYO", "tokyo", True),  # case-insensitive
    ],
)
def test_published_rule(text: str, answer: str, expected: bool) -> None:
    assert is_correct(text, answer) is expected


def test_strict_rule_rejects_partial_names() -> None:
    assert not is_correct(" United States.", "United States of America", rule="strict")
    assert is_correct(" the United States of America.", "United States of America", rule="strict")


def test_aliases_count_under_both_rules() -> None:
    for rule in ("published", "strict"):
        assert is_correct(" USA, of course", "United States of America", aliases=["USA"], rule=rule)
        assert not is_correct(" Canada", "United States of America", aliases=["USA"], rule=rule)


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown judging rule"):
        is_correct(" Tokyo", "Tokyo", rule="loose")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "answer", "settled"),
    [
        (" Tokyo", "Tokyo", True),
        (" the capital, Tok", "Tokyo", False),  # not yet
        (" United", "United States of America", False),  # right now, wrong if "Kingdom" follows
        (" Japan.\nTokyo", "Tokyo", False),  # settled, but wrong
        ("", "Tokyo", False),
    ],
)
def test_a_settled_continuation_is_right_whatever_follows(text: str, answer: str, settled: bool) -> None:
    assert settled_right(text, answer) is settled
    if settled:
        for tail in ("", " and Kyoto", "\nOsaka", " Kingdom"):
            assert is_correct(text + tail, answer)


def test_settled_under_the_strict_rule_and_with_aliases() -> None:
    assert settled_right(" the United States", "United States of America", aliases=["United States"], rule="strict")
    assert not settled_right(" United", "United States of America", rule="strict")
    assert settled_right(" USA is", "United States of America", aliases=["USA"])
