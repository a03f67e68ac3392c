"""``creme demo`` (``main()`` in this process, on the embedded model): find, patch, check and revert one failure."""

from __future__ import annotations

import ast
import re

import pytest

from cli.demo import demo_cases
from service.engine.judging import is_correct
from tests.fixtures.cli import Creme

pytestmark = pytest.mark.slow


def test_demo_patches_a_failing_question_and_reverts_it_bit_for_bit(creme: Creme) -> None:
    code, out, err = creme("demo")
    assert code == 0, err
    [case] = [c for c in demo_cases() if f"{c.id}: the model answers each hop right" in out]
    [wrong] = [ast.literal_eval(text) for text in re.findall(r"wrong answer: (.*)$", out, re.MULTILINE)]
    [fixed] = [ast.literal_eval(text) for text in re.findall(r"fixed answer: (.*)$", out, re.MULTILINE)]
    assert not is_correct(wrong, case.answer, aliases=case.answer_aliases)
    assert is_correct(fixed, case.answer, aliases=case.answer_aliases)
    loaded, patched, reverted = re.findall(r"(?:as loaded|patched|reverted) +([0-9a-f]{64})", out)
    assert loaded == reverted != patched
    assert "bit-identical" in out
    assert re.search(r"canary facts still right: \d+/\d+", out)
