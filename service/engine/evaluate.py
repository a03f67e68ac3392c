"""Evaluation of an edit as CREME.md defines it: probability metrics and greedy accuracy, before/after."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from statistics import fmean

import torch

from service.engine.delta import EditDelta
from service.engine.judging import DEFAULT_RULE, JudgeRule, is_correct
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_token_ids, greedy, last_token_probs, mean_answer_prob
from service.engine.weights import WeightState

PARAPHRASE_FRAME = "Q: Who is the prime minister of Canada?\nA: Justin Trudeau\nQ: {question}\nA:"
SET_NAMES = ("correction", "paraphrase", "generalization", "specificity")
_CHUNK = 32
_CLAUSE_END = re.compile(r"[\n.,;:!?]")


@dataclass(frozen=True)
class Probe:
    """One evaluation query and the answer it should get."""

    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalSets:
    correction: tuple[Probe, ...] = ()
    paraphrase: tuple[Probe, ...] = ()
    generalization: tuple[Probe, ...] = ()
    specificity: tuple[Probe, ...] = ()

    def items(self) -> Iterator[tuple[str, tuple[Probe, ...]]]:
        for name in SET_NAMES:
            yield name, getattr(self, name)


@dataclass(frozen=True)
class Reading:
    """One probe read on one model state. ``rival`` is the model's wrong answer, fixed before the edit."""

    p_answer: float
    rival: str
    p_rival: float
    continuation: str
    correct: bool
    p_leak: float | None  # p(edited answer) on this probe; specificity only


@dataclass(frozen=True)
class ProbeResult:
    prompt: str
    answer: str
    pre: Reading
    post: Reading


@dataclass(frozen=True)
class SetMetrics:
    """Aggregates over one query set; None where the set is empty or the metric does not apply."""

    n: int
    p_pre_mean: float | None = None
    p_post_mean: float | None = None
    mean_rel_change: float | None = None
    share_increased: float | None = None
    win_rate_pre: float | None = None
    win_rate_post: float | None = None
    greedy_acc_pre: float | None = None
    greedy_acc_post: float | None = None
    leakage_pre_mean: float | None = None
    leakage_post_mean: float | None = None
    leakage_mean_rel_change: float | None = None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class Evaluation:
    sets: dict[str, SetMetrics]
    probes: dict[str, list[ProbeResult]]
    rule: JudgeRule = DEFAULT_RULE

    @property
    def improved(self) -> bool:
        """Whether the edit raised p(answer) on the compositional query itself."""
        return all(r.post.p_answer > r.pre.p_answer for r in self.probes["correction"])

    def to_dict(self) -> dict:
        return {
            "judge": self.rule,
            "sets": {name: m.to_dict() for name, m in self.sets.items()},
            "probes": {name: [asdict(r) for r in results] for name, results in self.probes.items()},
        }


def _rival_from(lm: LoadedModel, continuation: str, probs: torch.Tensor, probe: Probe, rule: JudgeRule) -> str:
    """The model's own wrong answer: its greedy clause, or the best token that does not start the answer."""
    clause = " ".join(_CLAUSE_END.split(continuation, maxsplit=1)[0].split()[:4])
    if clause and not is_correct(clause, probe.answer, aliases=probe.aliases, rule=rule):
        return clause
    ranked = torch.argsort(probs, descending=True)[:2].tolist()
    first = answer_token_ids(lm, probe.answer)[0]
    best = ranked[1] if ranked[0] == first else ranked[0]
    return lm.tokenizer.decode([best]).strip() or lm.tokenizer.decode([best])


def read_probes(
    lm: LoadedModel,
    probes: Sequence[Probe],
    *,
    rivals: Sequence[str] | None = None,
    leak_answer: str | None = None,
    max_new_tokens: int = 10,
    rule: JudgeRule = DEFAULT_RULE,
) -> list[Reading]:
    """Read every probe on the model as it is now, in chunks; rivals are derived when not given."""
    readings: list[Reading] = []
    for start in range(0, len(probes), _CHUNK):
        chunk = probes[start : start + _CHUNK]
        prompts = [p.prompt for p in chunk]
        probs = last_token_probs(lm, prompts)
        texts = greedy(lm, prompts, max_new_tokens=max_new_tokens)
        for i, (probe, row, text) in enumerate(zip(chunk, probs, texts, strict=True)):
            rival = rivals[start + i] if rivals is not None else _rival_from(lm, text, row, probe, rule)
            readings.append(
                Reading(
                    p_answer=mean_answer_prob(row, answer_token_ids(lm, probe.answer)),
                    rival=rival,
                    p_rival=mean_answer_prob(row, answer_token_ids(lm, rival)),
                    continuation=text,
                    correct=is_correct(text, probe.answer, aliases=probe.aliases, rule=rule),
                    p_leak=None if leak_answer is None else mean_answer_prob(row, answer_token_ids(lm, leak_answer)),
                )
            )
    return readings


def _rel(pre: float, post: float) -> float:
    return (post - pre) / max(pre, 1e-12)


def summarise(results: Sequence[ProbeResult]) -> SetMetrics:
    if not results:
        return SetMetrics(n=0)
    pre = [r.pre for r in results]
    post = [r.post for r in results]
    leaks = [(a.p_leak, b.p_leak) for a, b in zip(pre, post, strict=True) if a.p_leak is not None]
    return SetMetrics(
        n=len(results),
        p_pre_mean=fmean(r.p_answer for r in pre),
        p_post_mean=fmean(r.p_answer for r in post),
        mean_rel_change=fmean(_rel(a.p_answer, b.p_answer) for a, b in zip(pre, post, strict=True)),
        share_increased=fmean(float(b.p_answer > a.p_answer) for a, b in zip(pre, post, strict=True)),
        win_rate_pre=fmean(float(r.p_answer > r.p_rival) for r in pre),
        win_rate_post=fmean(float(r.p_answer > r.p_rival) for r in post),
        greedy_acc_pre=fmean(float(r.correct) for r in pre),
        greedy_acc_post=fmean(float(r.correct) for r in post),
        leakage_pre_mean=fmean(a for a, _ in leaks) if leaks else None,
        leakage_post_mean=fmean(b for _, b in leaks) if leaks else None,
        leakage_mean_rel_change=fmean(_rel(a, b) for a, b in leaks) if leaks else None,
    )


def evaluate_edit(
    lm: LoadedModel,
    weights: WeightState,
    delta: EditDelta,
    sets: EvalSets,
    *,
    edited_answer: str,
    max_new_tokens: int = 10,
    rule: JudgeRule = DEFAULT_RULE,
) -> Evaluation:
    """Read every set before and with ``delta`` applied on top of the current state, then undo it."""
    pre = {
        name: read_probes(
            lm,
            probes,
            leak_answer=edited_answer if name == "specificity" else None,
            max_new_tokens=max_new_tokens,
            rule=rule,
        )
        for name, probes in sets.items()
    }
    with weights.trial("evaluation", delta):
        post = {
            name: read_probes(
                lm,
                probes,
                rivals=[r.rival for r in pre[name]],
                leak_answer=edited_answer if name == "specificity" else None,
                max_new_tokens=max_new_tokens,
                rule=rule,
            )
            for name, probes in sets.items()
        }
    probes = {
        name: [
            ProbeResult(prompt=p.prompt, answer=p.answer, pre=a, post=b)
            for p, a, b in zip(sets_probes, pre[name], post[name], strict=True)
        ]
        for name, sets_probes in sets.items()
    }
    return Evaluation(sets={name: summarise(results) for name, results in probes.items()}, probes=probes, rule=rule)
