"""Logit lens: what each layer's residual stream predicts when read out through the unembedding (CREME.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.engine.hooks import OutputEdit, Resume, block_path, run
from service.engine.loading import LoadedModel
from service.engine.prompts import Batch, answer_token_ids, encode


@dataclass(frozen=True)
class TokenProb:
    """One vocabulary entry of a layer's lens distribution."""

    token: str  # decoded text, leading space kept
    token_id: int
    prob: float


@dataclass(frozen=True)
class TargetStat:
    """A target string at one layer: probability and 1-based rank, each averaged over its sub-tokens.

    The rank is an integer: the mean of the sub-tokens' ranks rounded to the nearest (halves up),
    so a one-token target has exactly its token's rank.
    """

    target: str
    prob: float
    rank: int


@dataclass(frozen=True)
class LensLayer:
    layer: int
    top: tuple[TokenProb, ...]
    targets: tuple[TargetStat, ...]


@dataclass(frozen=True)
class LensResult:
    """The logit lens of one prompt at one position, one entry per block."""

    prompt: str
    position: int  # index into the prompt's tokens (non-negative)
    token: str  # the token at ``position``
    apply_final_norm: bool
    targets: tuple[str, ...]
    target_token_ids: tuple[tuple[int, ...], ...]
    layers: tuple[LensLayer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "position": self.position,
            "token": self.token,
            "apply_final_norm": self.apply_final_norm,
            "targets": list(self.targets),
            "target_token_ids": [list(ids) for ids in self.target_token_ids],
            "layers": [
                {
                    "layer": entry.layer,
                    "top": [{"token": t.token, "token_id": t.token_id, "prob": t.prob} for t in entry.top],
                    "targets": [{"target": s.target, "prob": s.prob, "rank": s.rank} for s in entry.targets],
                }
                for entry in self.layers
            ],
        }


def unembed(lm: LoadedModel, hidden: torch.Tensor, *, apply_final_norm: bool = True) -> torch.Tensor:
    """Logits W_U · norm(h) (or W_U · h) for residual vectors ``hidden`` [..., d_model] → [..., vocab]."""
    if apply_final_norm:
        hidden = lm.adapter.norm(lm.model)(hidden)
    return lm.model.get_output_embeddings()(hidden)


@torch.no_grad()
def last_logits(
    lm: LoadedModel,
    batch: Batch,
    edit_outputs: Mapping[str, OutputEdit] | None = None,
    *,
    resume: Resume | None = None,
) -> torch.Tensor:
    """Next-token logits at each row's last position, [batch, vocab], unembedding only that position.

    Equals the model's own logits: the pass stops after the final norm and applies the unembedding
    module to the last position, which is what the ``*ForCausalLM`` head does. ``resume`` skips the
    blocks below ``resume.layer`` (see :func:`service.engine.hooks.run`).
    """
    norm = lm.adapter.final_norm
    trace = run(lm, batch, record_outputs=[norm], edit_outputs=edit_outputs, stop_after=norm, resume=resume)
    return unembed(lm, trace.outputs[norm][:, -1], apply_final_norm=False)


def mean_rank(ranks: Sequence[int]) -> int:
    """The mean of 1-based ``ranks`` rounded to the nearest integer, halves up (exact integer arithmetic)."""
    return (2 * sum(ranks) + len(ranks)) // (2 * len(ranks))


def _ranks(logits: torch.Tensor, ids: Sequence[int]) -> list[int]:
    """1-based rank of each id in ``logits`` [vocab]: one plus the number of strictly more likely tokens.

    Ranked on logits, not probabilities, so that tokens whose probability underflows stay ordered.
    """
    chosen = logits[list(ids)]  # [n_ids]
    return [int((logits > value).sum()) + 1 for value in chosen]


@torch.no_grad()
def lens_logits(
    lm: LoadedModel, prompt: str, *, apply_final_norm: bool = True, position: int = -1
) -> tuple[torch.Tensor, int, int]:
    """Lens logits of every block's output at ``position``: ([n_layers, vocab], position, token id there).

    Block outputs are un-normed residual streams, so the final norm (when applied) is applied to
    every layer, the last included; the last layer's lens then equals the model's logits.
    """
    batch = encode(lm, [prompt])  # [1, seq], no padding
    seq = int(batch.input_ids.shape[1])
    if not -seq <= position < seq:
        raise ValueError(f"position {position} is outside the prompt's {seq} tokens")
    position %= seq
    paths = [block_path(lm, layer) for layer in range(lm.n_layers)]
    trace = run(lm, batch, record_outputs=paths, stop_after=paths[-1])
    hidden = torch.stack([trace.outputs[p][0, position] for p in paths])  # [n_layers, d_model]
    return unembed(lm, hidden, apply_final_norm=apply_final_norm), position, int(batch.input_ids[0, position])


@torch.no_grad()
def logit_lens(
    lm: LoadedModel,
    prompt: str,
    targets: Sequence[str] = (),
    *,
    top_k: int = 5,
    apply_final_norm: bool = True,
    position: int = -1,
) -> LensResult:
    """Read every block's output at ``position`` through the unembedding (see :func:`lens_logits`).

    Per layer: the ``top_k`` tokens and, for each target, p and 1-based rank averaged over its
    sub-tokens. The model is left unchanged.
    """
    if top_k < 1:
        raise ValueError("top_k must be at least 1")
    logits, position, token_id = lens_logits(lm, prompt, apply_final_norm=apply_final_norm, position=position)
    logits = logits.float()  # [n_layers, vocab]
    probs = torch.softmax(logits, dim=-1)  # [n_layers, vocab]
    target_ids = [tuple(answer_token_ids(lm, t)) for t in targets]
    top_p, top_i = probs.topk(min(top_k, probs.shape[-1]), dim=-1)  # [n_layers, k]
    layers = []
    for layer, row in enumerate(probs):
        top = tuple(
            TokenProb(token=lm.tokenizer.decode([int(i)]), token_id=int(i), prob=float(p))
            for p, i in zip(top_p[layer], top_i[layer], strict=True)
        )
        stats = tuple(
            TargetStat(target=t, prob=float(row[list(ids)].mean()), rank=mean_rank(_ranks(logits[layer], ids)))
            for t, ids in zip(targets, target_ids, strict=True)
        )
        layers.append(LensLayer(layer=layer, top=top, targets=stats))
    return LensResult(
        prompt=prompt,
        position=position,
        token=lm.tokenizer.decode([token_id]),
        apply_final_norm=apply_final_norm,
        targets=tuple(targets),
        target_token_ids=tuple(target_ids),
        layers=tuple(layers),
    )


def _cell(text: str, width: int) -> str:
    """``text`` quoted with escapes (so spaces and newlines show), cut to ``width`` characters."""
    text = repr(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def format_lens_table(result: LensResult, *, token_width: int = 14) -> str:
    """A fixed-width text table: one row per layer with the top-1 token and each target's p and rank."""
    names = [t if len(t) <= 16 else t[:15] + "…" for t in result.targets]
    widths = [max(9, len(name) + 3) for name in names]
    head = f"{'layer':>5}  {'top-1':<{token_width}} {'p':>6}"
    for name, width in zip(names, widths, strict=True):
        head += f"  {'p(' + name + ')':>{width}} {'rank':>8}"
    norm = "applied" if result.apply_final_norm else "skipped"
    lines = [f"logit lens at position {result.position} ({result.token!r}), final norm {norm}", head, "-" * len(head)]
    for entry in result.layers:
        best = entry.top[0]
        line = f"{entry.layer:>5}  {_cell(best.token, token_width):<{token_width}} {best.prob:>6.3f}"
        for stat, width in zip(entry.targets, widths, strict=True):
            line += f"  {stat.prob:>{width}.4f} {stat.rank:>8d}"
        lines.append(line)
    return "\n".join(lines)
