"""Patching from the failing prompt alone: the bridge and the answer read from the model's own answers.

The bridge is the model's greedy answer to the first-hop cloze ("The author of Misery is" →
"Stephen King"); the answer is its greedy answer to the guide prompt (the prompt with the first-hop
phrase replaced by that bridge). Both are read on the model as it is now. A trivial answer (empty,
one or two letters, a lone article) or a rambling one is refused with the step named, so nothing is
edited towards it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.engine.creme import CompositionalQuery
from service.engine.loading import LoadedModel
from service.engine.prompts import greedy

ANSWER_TOKENS = 12
MAX_ENTITY_WORDS = 8
_CLAUSE_END = re.compile(r"[\n.,;:!?()\[\]\"]|\s[-–—]\s")
_ARTICLES = frozenset({"the", "a", "an"})
_MIN_CHARS = 3


class InferenceError(ValueError):
    """The model's own answer at ``step`` ("first hop" or "second hop") cannot serve as an entity."""

    def __init__(self, step: str, prompt: str, continuation: str, reason: str) -> None:
        self.step, self.prompt, self.continuation = step, prompt, continuation
        super().__init__(f"cannot infer the {step}: the model answers {prompt!r} with {continuation!r} ({reason})")


@dataclass(frozen=True)
class InferredQuery:
    """A query with its bridge and answer, and which of them were read from the model."""

    query: CompositionalQuery
    answer: str
    bridge_inferred: bool
    answer_inferred: bool

    def record(self) -> dict[str, object]:
        """What an edit reports: the values and whether each was inferred."""
        return {
            "bridge": self.query.bridge,
            "answer": self.answer,
            "inferred": {"bridge": self.bridge_inferred, "answer": self.answer_inferred},
        }


def first_hop_cloze(hop1_phrase: str) -> str:
    """ "the author of Misery" → "The author of Misery is"."""
    phrase = hop1_phrase.strip()
    return f"{phrase[0].upper()}{phrase[1:]} is"


def entity(continuation: str) -> str | None:
    """The entity a greedy continuation names: its first clause, trimmed; None if trivial or rambling."""
    clause = _CLAUSE_END.split(continuation.strip(), maxsplit=1)[0].strip()
    words = clause.split()
    core = " ".join(words[1:] if words and words[0].casefold() in _ARTICLES else words)
    if len(core) < _MIN_CHARS or len(words) > MAX_ENTITY_WORDS:
        return None
    return clause


def _read(lm: LoadedModel, step: str, prompt: str) -> str:
    continuation = greedy(lm, [prompt], max_new_tokens=ANSWER_TOKENS)[0]
    found = entity(continuation)
    if found is None:
        reason = "empty or trivial" if len(continuation.split()) <= MAX_ENTITY_WORDS else "not a short entity"
        raise InferenceError(step, prompt, continuation, reason)
    return found


def infer_query(
    lm: LoadedModel, prompt: str, hop1_phrase: str, *, bridge: str | None = None, answer: str | None = None
) -> InferredQuery:
    """The query of ``prompt`` with the missing bridge and answer read from the model as it is now.

    Raises InferenceError naming the step whose answer is unusable, ValueError for a bad query.
    """
    found_bridge = bridge if bridge is not None else _read(lm, "first hop", first_hop_cloze(hop1_phrase))
    query = CompositionalQuery(prompt=prompt, hop1_phrase=hop1_phrase, bridge=found_bridge)
    found_answer = answer if answer is not None else _read(lm, "second hop", query.guide_prompt)
    return InferredQuery(query, found_answer, bridge_inferred=bridge is None, answer_inferred=answer is None)
