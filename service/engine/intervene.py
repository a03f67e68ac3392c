"""Intervention: suppress the bridge o1 in the residual stream and watch p(o2) (CREME.md, "Intervention")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.engine.hooks import OutputEdit, block_path, resume_from, run, select_layers
from service.engine.lens import last_logits, unembed
from service.engine.loading import LoadedModel
from service.engine.prompts import answer_token_ids, encode

_LAYERS_PER_PASS = 8  # edited layers per forward pass (two rows each)


@dataclass(frozen=True)
class InterventionLayer:
    """p(o2) at the last position with layer ``layer``'s residual stream edited, and unedited."""

    layer: int
    baseline: float  # no edit (the same for every layer)
    suppressed: float  # o1's sub-tokens pushed to the minimum logit
    control: float  # as many random vocabulary ids pushed to the minimum logit


@dataclass(frozen=True)
class InterventionResult:
    prompt: str
    bridge: str
    answer: str
    bridge_token_ids: tuple[int, ...]
    answer_token_ids: tuple[int, ...]
    control_token_ids: tuple[int, ...]
    compensate: bool
    scale: float
    seed: int
    layers: tuple[InterventionLayer, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "bridge": self.bridge,
            "answer": self.answer,
            "bridge_token_ids": list(self.bridge_token_ids),
            "answer_token_ids": list(self.answer_token_ids),
            "control_token_ids": list(self.control_token_ids),
            "compensate": self.compensate,
            "scale": self.scale,
            "seed": self.seed,
            "layers": [
                {"layer": e.layer, "baseline": e.baseline, "suppressed": e.suppressed, "control": e.control}
                for e in self.layers
            ],
        }


def control_ids(vocab: int, count: int, exclude: Sequence[int], seed: int) -> list[int]:
    """``count`` distinct random ids in 0..vocab-1 outside ``exclude``, from a generator seeded with ``seed``."""
    allowed = torch.ones(vocab, dtype=torch.bool)
    allowed[list(exclude)] = False
    candidates = allowed.nonzero().squeeze(-1)  # [n_allowed]
    if count > len(candidates):
        raise ValueError(f"cannot draw {count} control ids from {len(candidates)} candidates")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(candidates), generator=generator)[:count]
    return sorted(int(i) for i in candidates[picks])


def suppression_shift(
    w_u: torch.Tensor,
    pinv: torch.Tensor,
    hidden: torch.Tensor,
    suppress: Sequence[int],
    keep: Sequence[int],
    *,
    compensate: bool,
    scale: float,
) -> torch.Tensor:
    """Δh (float64, [d_model]) that sends the raw logits of ``suppress`` to the minimum logit.

    ``w_u`` [vocab, d_model] and ``pinv`` = pinv(W_U) [d_model, vocab] are float64; ``hidden`` is one
    residual vector [d_model]. v = W_U h; Δv_k = min_j v_j - v_k on ``suppress``; Δh = A Δv. With
    ``compensate``, Δ₂_j = s (v_j - v'_j) on ``keep`` with v' = W_U (h + Δh), and A Δ₂ is added.
    """
    h = hidden.to(torch.float64)
    v = w_u @ h  # [vocab]
    ids = list(suppress)
    shift = pinv[:, ids] @ (v.min() - v[ids])  # [d_model]
    if compensate:
        kept = list(keep)
        v_after = w_u[kept] @ (h + shift)  # [n_keep]
        shift = shift + pinv[:, kept] @ (scale * (v[kept] - v_after))
    return shift


def _answer_prob(logits: torch.Tensor, ids: Sequence[int]) -> list[float]:
    """Mean softmax probability of ``ids`` per row of ``logits`` [rows, vocab]."""
    return torch.softmax(logits.float(), dim=-1)[:, list(ids)].mean(-1).tolist()


def _adder(rows: list[int], shifts: torch.Tensor) -> OutputEdit:
    """An output edit adding ``shifts`` [n, d] to the last position of ``rows`` of a [batch, seq, d] output."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[rows, -1] += shifts.to(output.dtype)
        return output

    return edit


@torch.no_grad()
def intervene(
    lm: LoadedModel,
    prompt: str,
    bridge: str,
    answer: str,
    *,
    layers: Sequence[int] | None = None,
    compensate: bool = True,
    scale: float = 1.0,
    seed: int = 0,
) -> InterventionResult:
    """Per layer, p(o2) after suppressing o1 (and, as control, random ids) at the last position.

    The edit is on the block output (residual stream) in raw-logit space, v = W_U h, as published.
    Each pass batches two rows (o1, control) per layer for several layers and resumes from the
    clean residual stream below the lowest of them. The model is left unchanged.
    """
    layers = select_layers(lm, layers)
    o1 = list(dict.fromkeys(answer_token_ids(lm, bridge)))
    o2 = answer_token_ids(lm, answer)
    w_u = lm.adapter.unembedding(lm.model).detach().to(torch.float64)  # [vocab, d_model]
    pinv = lm.unembed_pinv().to(w_u.device)  # [d_model, vocab]
    random_ids = control_ids(w_u.shape[0], len(o1), [*o1, *o2], seed)

    single = encode(lm, [prompt])  # [1, seq]
    blocks = [block_path(lm, layer) for layer in range(lm.n_layers)]
    norm = lm.adapter.final_norm
    clean = run(lm, single, record_outputs=[*blocks, norm], stop_after=norm)
    baseline = _answer_prob(unembed(lm, clean.outputs[norm][:, -1], apply_final_norm=False), o2)[0]
    edited: list[tuple[float, float]] = []  # (suppressed, control) per layer
    for chunk_start in range(0, len(layers), _LAYERS_PER_PASS):
        chunk = layers[chunk_start : chunk_start + _LAYERS_PER_PASS]
        edits: dict[str, OutputEdit] = {}
        for i, layer in enumerate(chunk):
            h = clean.outputs[blocks[layer]][0, -1]  # [d_model]
            shifts = torch.stack(
                [
                    suppression_shift(w_u, pinv, h, ids, o2, compensate=compensate, scale=scale)
                    for ids in (o1, random_ids)
                ]
            )  # [2, d_model]
            edits[blocks[layer]] = _adder([2 * i, 2 * i + 1], shifts)
        rows = 2 * len(chunk)
        batch = single.repeat_first(rows)  # copies of the prompt, [rows, seq]
        # Blocks below the chunk's lowest layer are unedited: resume from the clean run's residual stream.
        resume = resume_from(lm, clean, chunk[0], rows)
        probs = _answer_prob(last_logits(lm, batch, edits, resume=resume), o2)  # [rows]
        edited.extend(zip(probs[0::2], probs[1::2], strict=True))
    entries = tuple(
        InterventionLayer(layer=layer, baseline=baseline, suppressed=sup, control=ctl)
        for layer, (sup, ctl) in zip(layers, edited, strict=True)
    )
    return InterventionResult(
        prompt=prompt,
        bridge=bridge,
        answer=answer,
        bridge_token_ids=tuple(o1),
        answer_token_ids=tuple(o2),
        control_token_ids=tuple(random_ids),
        compensate=compensate,
        scale=scale,
        seed=seed,
        layers=entries,
    )
