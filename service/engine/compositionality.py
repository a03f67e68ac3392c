"""The compositionality gap: cases whose single hops the model answers but whose composition it fails."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from service.engine.cases import TwoHopCase
from service.engine.judging import DEFAULT_RULE, JudgeRule, is_correct
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_token_ids, greedy

_CHUNK = 48


@dataclass(frozen=True)
class CaseCheck:
    """Greedy correctness of one case's first hop, second hop (guide query) and composition.

    ``hop2`` and ``composition`` are None when a hop1-first screen skipped them.
    """

    id: str
    hop1: bool
    hop2: bool | None
    composition: bool | None
    composition_text: str | None

    @property
    def worth_patching(self) -> bool:
        return self.hop1 and bool(self.hop2) and self.composition is False


@dataclass(frozen=True)
class GapReport:
    n: int
    judge: str
    hop1_acc: float
    hop2_acc: float | None  # None after a hop1-first screen
    composition_acc: float | None
    both_hops: int
    gap: float  # share of cases with both hops right whose composition fails
    failing_ids: list[str]
    checks: list[CaseCheck]

    def to_dict(self) -> dict:
        return {**asdict(self), "checks": [asdict(c) for c in self.checks]}


def _judge(
    lm: LoadedModel,
    prompts: Sequence[str],
    answers: Sequence[tuple[str, tuple[str, ...]]],
    limit: int,
    rule: JudgeRule,
) -> list[tuple[bool, str]]:
    """Greedy-decode each prompt and judge it against (answer, aliases).

    The strict rule only needs the answer's length (plus a leading 'the'); the published rule reads
    the whole first line, so it always gets ``limit`` tokens (a cut-off line could match spuriously).
    """
    out: list[tuple[bool, str]] = []
    for start in range(0, len(prompts), _CHUNK):
        chunk = answers[start : start + _CHUNK]
        budget = limit
        if rule == "strict":
            budget = min(limit, 2 + max(len(answer_token_ids(lm, a)) for a, _ in chunk))
        texts = greedy(lm, prompts[start : start + _CHUNK], max_new_tokens=budget)
        out.extend((is_correct(t, a, aliases=al, rule=rule), t) for t, (a, al) in zip(texts, chunk, strict=True))
    return out


def check_cases(
    lm: LoadedModel,
    cases: Sequence[TwoHopCase],
    *,
    screen_hop1: bool = False,
    max_new_tokens: int = 10,
    rule: JudgeRule = DEFAULT_RULE,
    progress: Callable[[int, int, str], None] | None = None,
) -> GapReport:
    """Greedy-check every case on the model as it is now and measure the compositionality gap.

    With ``screen_hop1`` the second hop and the composition are only checked where the first hop
    passed — enough to find the cases worth patching, at a fraction of the cost.
    """
    hop1 = _judge(
        lm, [c.hop1_cloze for c in cases], [(c.bridge, c.bridge_aliases) for c in cases], max_new_tokens, rule
    )
    if progress is not None:
        progress(1, 2, "checked first hops")
    todo = [i for i, (ok, _) in enumerate(hop1) if ok or not screen_hop1]
    answers = [(cases[i].answer, cases[i].answer_aliases) for i in todo]
    hop2 = _judge(lm, [cases[i].hop2 for i in todo], answers, max_new_tokens, rule)
    comp = _judge(lm, [cases[i].compositional for i in todo], answers, max_new_tokens, rule)
    later = {i: (h2[0], c[0], c[1]) for i, h2, c in zip(todo, hop2, comp, strict=True)}
    checks = [CaseCheck(case.id, hop1[i][0], *later.get(i, (None, None, None))) for i, case in enumerate(cases)]
    if progress is not None:
        progress(2, 2, "checked second hops and compositions")
    total = max(len(checks), 1)
    both = [c for c in checks if c.hop1 and c.hop2]
    return GapReport(
        n=len(checks),
        judge=rule,
        hop1_acc=sum(c.hop1 for c in checks) / total,
        hop2_acc=None if screen_hop1 else sum(bool(c.hop2) for c in checks) / total,
        composition_acc=None if screen_hop1 else sum(bool(c.composition) for c in checks) / total,
        both_hops=len(both),
        gap=sum(c.worth_patching for c in checks) / max(len(both), 1),
        failing_ids=[c.id for c in checks if c.worth_patching],
        checks=checks,
    )
