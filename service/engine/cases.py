"""Two-hop cases in the JSONL format of the MQuAKE-derived dataset (see tests/data/README.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from service.engine.evaluate import PARAPHRASE_FRAME, EvalSets, Probe


class CaseFormatError(ValueError):
    """A dataset line is not a valid two-hop case."""


@dataclass(frozen=True)
class TwoHopCase:
    """One compositional query with its hops and evaluation sets."""

    id: str
    compositional: str
    hop1_phrase: str
    bridge: str
    hop2: str
    answer: str
    questions: tuple[str, ...] = ()
    answer_aliases: tuple[str, ...] = ()
    bridge_aliases: tuple[str, ...] = ()
    generalization: tuple[Probe, ...] = field(default=())
    specificity: tuple[Probe, ...] = field(default=())

    @property
    def hop1_cloze(self) -> str:
        """The first-hop cloze: the hop1 phrase with its first letter upper-cased, then 'is'."""
        phrase = self.hop1_phrase
        return f"{phrase[0].upper()}{phrase[1:]} is"

    def eval_sets(self) -> EvalSets:
        return EvalSets(
            correction=(Probe(self.compositional, self.answer, self.answer_aliases),),
            paraphrase=tuple(
                Probe(PARAPHRASE_FRAME.format(question=q), self.answer, self.answer_aliases) for q in self.questions
            ),
            generalization=self.generalization,
            specificity=self.specificity,
        )

    @classmethod
    def from_dict(cls, raw: dict) -> TwoHopCase:
        try:
            return cls(
                id=str(raw.get("id", "")),
                compositional=raw["compositional"],
                hop1_phrase=raw["hop1_phrase"],
                bridge=raw["bridge"],
                hop2=raw["hop2"],
                answer=raw["answer"],
                questions=tuple(raw.get("questions", ())),
                answer_aliases=_strings(raw.get("answer_aliases", ())),
                bridge_aliases=_strings(raw.get("bridge_aliases", ())),
                generalization=tuple(_probe(g) for g in raw.get("generalization", ())),
                specificity=tuple(_probe(s) for s in raw.get("specificity", ())),
            )
        except (KeyError, TypeError) as exc:
            raise CaseFormatError(f"missing or malformed field: {exc}") from exc


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise TypeError("aliases must be a list of strings")
    return tuple(value)


def _probe(raw: dict) -> Probe:
    return Probe(raw["cloze"], raw["answer"], _strings(raw.get("answer_aliases", ())))


def load_cases(path: Path, limit: int | None = None) -> list[TwoHopCase]:
    """Read a JSONL file of cases; errors name the offending line."""
    cases: list[TwoHopCase] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                cases.append(TwoHopCase.from_dict(json.loads(line)))
            except (json.JSONDecodeError, CaseFormatError) as exc:
                raise CaseFormatError(f"{path}:{number}: {exc}") from exc
            if limit is not None and len(cases) >= limit:
                break
    return cases
