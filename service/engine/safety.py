"""What an edit must not break: canary facts the base model knows, earlier edits, and generic text.

The canary set of a model is the shipped list ``data/canaries.jsonl`` kept to the facts the base
model answers right (measured once per fingerprint and cached as JSON); the prompts of the edits
already active join it at check time. Generic-text drift is the mean next-token KL divergence, in
nats per token, between two model states on the held-out part of the generic sample.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from importlib import resources
from pathlib import Path

import torch

from service.engine.context import EditContext
from service.engine.delta import EditDelta
from service.engine.hooks import Resume, block_path, run
from service.engine.judging import DEFAULT_RULE, JudgeRule, is_correct, settled_right
from service.engine.keystats import drift_paragraphs
from service.engine.loading import LoadedModel
from service.engine.prompts import encode, greedy

_CANARY_TOKENS = 8
_CHUNK = 64
_DRIFT_WORDS = 64  # the opening words of each held-out paragraph: about 700 tokens in all


@dataclass(frozen=True)
class Canary:
    """A prompt the model answers right and must keep answering right."""

    prompt: str
    answer: str
    aliases: tuple[str, ...] = ()
    source: str = "fact"  # "fact" (shipped list) or "edit:<id>"


def shipped_facts() -> list[Canary]:
    text = resources.files("service.engine").joinpath("data/canaries.jsonl").read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [Canary(r["prompt"], r["answer"], tuple(r.get("aliases", ()))) for r in rows]


def answered(
    lm: LoadedModel, canaries: Sequence[Canary], rule: JudgeRule = DEFAULT_RULE, max_new_tokens: int = _CANARY_TOKENS
) -> list[bool]:
    """Whether the model as it is now answers each canary right (greedy, judged by ``rule``; each
    continuation stops once its verdict is settled)."""
    verdicts: list[bool] = []
    for start in range(0, len(canaries), _CHUNK):
        chunk = canaries[start : start + _CHUNK]
        stops = [partial(settled_right, answer=c.answer, aliases=c.aliases, rule=rule) for c in chunk]
        texts = greedy(lm, [c.prompt for c in chunk], max_new_tokens=max_new_tokens, stop=stops)
        verdicts += [is_correct(t, c.answer, aliases=c.aliases, rule=rule) for t, c in zip(texts, chunk, strict=True)]
    return verdicts


def known_facts(lm: LoadedModel, cache_dir: Path | None, rule: JudgeRule = DEFAULT_RULE) -> list[Canary]:
    """The shipped facts this base model answers right; call on the pristine model (cached per fingerprint)."""
    facts = shipped_facts()
    path = None if cache_dir is None else cache_dir / "canaries" / f"{lm.fingerprint}-{rule}.json"
    if path is not None and path.is_file():
        kept = set(json.loads(path.read_text()))
        return [f for f in facts if f.prompt in kept]
    known = [f for f, ok in zip(facts, answered(lm, facts, rule), strict=True) if ok]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([f.prompt for f in known]))
        tmp.replace(path)
    return known


@dataclass(frozen=True)
class CanaryCheck:
    """Canaries right before an edit, and those of them the edit breaks."""

    n_checked: int
    regressions: list[Canary]

    @property
    def kept(self) -> int:
        return self.n_checked - len(self.regressions)

    def to_dict(self) -> dict:
        return {"checked": self.n_checked, "kept": self.kept, "regressions": [asdict(c) for c in self.regressions]}


def regressions(before: Sequence[bool], after: Sequence[bool], canaries: Sequence[Canary]) -> CanaryCheck:
    """Compare two readings of the same canaries: only those right before count."""
    right = [i for i, ok in enumerate(before) if ok]
    return CanaryCheck(len(right), [canaries[i] for i in right if not after[i]])


class DriftProbe:
    """Next-token distributions of one model state on the drift sample; ``kl`` compares the model now.

    ``paragraphs``/``words``: the first paragraphs of the held-out sample and the opening words of
    each (default: all, 64 words, about 700 tokens). ``resume_layers``: the layers a later ``kl`` may
    resume at (their block inputs are kept), for states that differ only from such a layer up.
    """

    def __init__(
        self, lm: LoadedModel, *, paragraphs: int | None = None, words: int = _DRIFT_WORDS,
        resume_layers: Sequence[int] = (),
    ) -> None:  # fmt: skip
        self.lm = lm
        self.batch = encode(lm, [" ".join(p.split()[:words]) for p in drift_paragraphs()[:paragraphs]])
        self.mask = self.batch.attention_mask.bool()
        blocks = {layer: block_path(lm, layer) for layer in resume_layers if layer > 0}
        trace = run(lm, self.batch, record_inputs=list(blocks.values()))
        self.inputs = {layer: trace.inputs[path] for layer, path in blocks.items()}
        log_p = self._log_probs(trace.logits)  # [real tokens, vocab]
        self.p_ref = log_p.exp()
        self.neg_entropy = (self.p_ref * log_p).sum(dim=-1)  # Σ p log p per token

    def _log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits[self.mask].float(), dim=-1)

    def kl(self, from_layer: int = 0) -> float:
        """Mean KL(reference ‖ now) per real token, in nats; ``from_layer``: the lowest layer changed since."""
        resume = Resume(from_layer, self.inputs[from_layer]) if from_layer in self.inputs else None
        now = self._log_probs(run(self.lm, self.batch, resume=resume).logits)
        return float((self.neg_entropy - (self.p_ref * now).sum(dim=-1)).mean())


@dataclass(frozen=True)
class SafetyReport:
    """Whether an edit fixes its own query, the canaries it breaks, and its generic-text drift."""

    fixes_own_query: bool
    own_continuation: str
    canaries: CanaryCheck
    generic_kl: float

    @property
    def safe(self) -> bool:
        return self.fixes_own_query and not self.canaries.regressions

    def to_dict(self) -> dict:
        return {
            "safe": self.safe,
            "fixes_own_query": self.fixes_own_query,
            "own_continuation": self.own_continuation,
            "canaries": self.canaries.to_dict(),
            "generic_kl": self.generic_kl,
        }


def canaries_for(ctx: EditContext, rule: JudgeRule = DEFAULT_RULE) -> list[Canary]:
    """The model's known facts plus the queries of the active edits (those that record their query)."""
    with ctx.weights.pristine():
        facts = known_facts(ctx.lm, ctx.cache_dir, rule)
    return [*facts, *edit_canaries(ctx)]


def edit_canaries(ctx: EditContext) -> list[Canary]:
    """The queries of the active edits that record their query and answer, in order."""
    edits = []
    for edit_id, delta in ctx.weights.active:
        query = delta.params.get("query") or {}
        if query.get("prompt") and query.get("answer"):
            aliases = tuple(query.get("answer_aliases") or ())
            edits.append(Canary(query["prompt"], query["answer"], aliases, source=f"edit:{edit_id}"))
    return edits


def check_safety(ctx: EditContext, delta: EditDelta, own: Canary, rule: JudgeRule = DEFAULT_RULE) -> SafetyReport:
    """Read the canaries and the drift sample before and with ``delta`` on top of the current state."""
    canaries = canaries_for(ctx, rule)
    before = ctx.per_state(("canaries", rule, tuple(canaries)), lambda: answered(ctx.lm, canaries, rule))
    drift = ctx.per_state(("drift",), lambda: DriftProbe(ctx.lm))
    with ctx.weights.trial("safety-check", delta):
        after = answered(ctx.lm, canaries, rule)
        own_text = greedy(ctx.lm, [own.prompt], max_new_tokens=_CANARY_TOKENS + 2)[0]
        kl = drift.kl()
    return SafetyReport(
        fixes_own_query=is_correct(own_text, own.answer, aliases=own.aliases, rule=rule),
        own_continuation=own_text,
        canaries=regressions(before, after, canaries),
        generic_kl=kl,
    )
