"""Judging a greedy continuation against an answer: the published rule (default) or the strict one.

``published`` is CREME's filter (``inference/MQuAKE/filter.py``): the first line of the
continuation is right when it contains the answer or an alias, or when the answer or an alias
contains it — the second direction guarded so that an empty line, a lone article or one or two
letters never count. ``strict``: the continuation starts with the answer or an alias, after an
optional "the"; it rejects "United States" for "United States of America".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

JudgeRule = Literal["published", "strict"]
JUDGE_RULES: tuple[str, ...] = get_args(JudgeRule)
DEFAULT_RULE: JudgeRule = "published"

_ARTICLES = frozenset({"the", "a", "an"})
_LEADING_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)
_LEADING_THE = re.compile(r"^\s*(the\s+)?", re.IGNORECASE)
_EDGE_PUNCTUATION = " \t.,;:!?\"'()[]"
_MIN_PREDICTION_CHARS = 3


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def _first_line(continuation: str) -> str:
    stripped = continuation.strip()
    return stripped.split("\n", 1)[0] if stripped else ""


def _published(continuation: str, answer: str) -> bool:
    line, target = _fold(_first_line(continuation)), _fold(answer)
    if not line or not target:
        return False
    if target in line:
        return True
    core = _LEADING_ARTICLE.sub("", line).strip(_EDGE_PUNCTUATION)
    trivial = len(core) < _MIN_PREDICTION_CHARS or core in _ARTICLES
    return not trivial and core in target


def _strict(continuation: str, answer: str) -> bool:
    target = _LEADING_THE.sub("", answer).strip().casefold()
    return bool(target) and _LEADING_THE.sub("", continuation).strip().casefold().startswith(target)


def is_correct(continuation: str, answer: str, *, aliases: Sequence[str] = (), rule: JudgeRule = DEFAULT_RULE) -> bool:
    """Whether ``continuation`` gives ``answer`` (or one of ``aliases``) under ``rule``."""
    if rule not in JUDGE_RULES:
        raise ValueError(f"unknown judging rule {rule!r}; use one of {', '.join(JUDGE_RULES)}")
    check = _published if rule == "published" else _strict
    return any(check(continuation, candidate) for candidate in (answer, *aliases) if candidate.strip())


def settled_right(
    continuation: str, answer: str, *, aliases: Sequence[str] = (), rule: JudgeRule = DEFAULT_RULE
) -> bool:
    """Whether ``continuation`` is right under ``rule`` whatever follows it: generation may stop there.

    Published: the first line already contains the answer or an alias; strict: it already starts
    with one. Implies :func:`is_correct` on ``continuation`` and on every longer continuation.
    """
    if rule == "strict":
        return is_correct(continuation, answer, aliases=aliases, rule=rule)
    line = _fold(_first_line(continuation))
    return any(_fold(c) in line for c in (answer, *aliases) if c.strip())
