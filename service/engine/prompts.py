"""Tokenisation and the probability/generation primitives every job shares."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from service.engine.loading import LoadedModel


@dataclass(frozen=True)
class Batch:
    """Left-padded prompts; the last position of every row is its last real token."""

    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    position_ids: torch.Tensor  # [batch, seq], 0 at each row's first real token

    @property
    def size(self) -> int:
        return int(self.input_ids.shape[0])

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }

    def repeat_first(self, n: int) -> Batch:
        """``n`` copies of row 0, [n, seq] (expanded views: nothing is copied)."""
        return Batch(
            input_ids=self.input_ids[:1].expand(n, -1),
            attention_mask=self.attention_mask[:1].expand(n, -1),
            position_ids=self.position_ids[:1].expand(n, -1),
        )


def encode(lm: LoadedModel, prompts: Sequence[str]) -> Batch:
    """Tokenise ``prompts`` with left padding and explicit position ids (needed by GPT-2)."""
    if not prompts:
        raise ValueError("at least one prompt is required")
    enc = lm.tokenizer(list(prompts), return_tensors="pt", padding=True)
    mask = enc["attention_mask"].to(lm.device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(input_ids=enc["input_ids"].to(lm.device), attention_mask=mask, position_ids=positions)


def answer_token_ids(lm: LoadedModel, answer: str) -> list[int]:
    """Token ids of ``answer`` as it follows a prompt: leading space, no special tokens."""
    ids = lm.tokenizer(" " + answer.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} has no tokens")
    return list(ids)


@torch.no_grad()
def last_token_probs(lm: LoadedModel, prompts: Sequence[str]) -> torch.Tensor:
    """Softmax of the next-token logits after each prompt, float32, shape [batch, vocab]."""
    logits = lm.model(**encode(lm, prompts).model_inputs(), use_cache=False).logits[:, -1]
    return torch.softmax(logits.float(), dim=-1)


def mean_answer_prob(probs: torch.Tensor, token_ids: Sequence[int]) -> float:
    """CREME's answer probability: the mean over the answer's sub-tokens of p at the last position."""
    return float(probs[list(token_ids)].mean())


def answer_probs(lm: LoadedModel, prompts: Sequence[str], answers: Sequence[str]) -> list[float]:
    """p(answer_i | prompt_i) for each pair, as :func:`mean_answer_prob` defines it."""
    if len(prompts) != len(answers):
        raise ValueError("prompts and answers differ in length")
    probs = last_token_probs(lm, prompts)
    return [mean_answer_prob(row, answer_token_ids(lm, a)) for row, a in zip(probs, answers, strict=True)]


class _StopWhen(StoppingCriteria):
    """Ends each row once ``checks[i]`` holds on its text so far (the text after the prompt)."""

    def __init__(self, lm: LoadedModel, prompt_len: int, checks: Sequence[Callable[[str], bool]]) -> None:
        self.tokenizer, self.prompt_len, self.checks = lm.tokenizer, prompt_len, checks

    def __call__(self, input_ids: torch.Tensor, scores: object, **kwargs: object) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        done = [check(text) for check, text in zip(self.checks, texts, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@torch.no_grad()
def greedy(
    lm: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 8,
    stop: Sequence[Callable[[str], bool]] | None = None,
) -> list[str]:  # fmt: skip
    """Greedy continuations of ``prompts`` (text after the prompt, special tokens removed).

    ``stop``: one check per prompt; a row ends early once its check holds on its continuation.
    """
    if stop is not None and len(stop) != len(prompts):
        raise ValueError("one stop check per prompt is required")
    batch = encode(lm, prompts)
    prompt_len = batch.input_ids.shape[1]
    out = lm.model.generate(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
        stopping_criteria=StoppingCriteriaList([_StopWhen(lm, prompt_len, stop)]) if stop else None,
    )
    return lm.tokenizer.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
