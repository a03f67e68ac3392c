"""Generic-text statistics of each edited projection's input, computed once per base model and cached.

The shipped sample ``data/generic.txt`` (original text, MIT like the project) is split into a
*statistics* part, whose keys (the inputs of the attention output projection at every position
but each paragraph's first token) give the per-layer second moment C = KᵀK / N that locality-
preserving edits protect, and a held-out *drift* part on which generic-text drift is measured.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from service.engine.hooks import block_path, run
from service.engine.loading import LoadedModel
from service.engine.prompts import Batch, encode

_DRIFT_EVERY = 4  # every 4th paragraph is held out for the drift measure
_CHUNK = 8


def generic_paragraphs() -> list[str]:
    """The paragraphs of the shipped generic text sample."""
    text = resources.files("service.engine").joinpath("data/generic.txt").read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def statistics_paragraphs() -> list[str]:
    return [p for i, p in enumerate(generic_paragraphs()) if i % _DRIFT_EVERY != _DRIFT_EVERY - 1]


def drift_paragraphs() -> list[str]:
    return [p for i, p in enumerate(generic_paragraphs()) if i % _DRIFT_EVERY == _DRIFT_EVERY - 1]


def _sample_digest(paragraphs: Sequence[str]) -> str:
    return hashlib.sha256("\n\n".join(paragraphs).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class KeyStatistics:
    """C_l = E[k kᵀ] over generic tokens for each layer in ``second_moments`` ([d_in, d_in], float32, CPU)."""

    second_moments: dict[int, torch.Tensor]
    n_tokens: int


def _content_mask(batch: Batch) -> torch.Tensor:
    """[batch, seq] True on real tokens except each row's first (attention sinks are not typical keys)."""
    mask = batch.attention_mask.bool().clone()
    first = mask.float().argmax(dim=1)
    mask[torch.arange(mask.shape[0]), first] = False
    return mask


@torch.no_grad()
def _measure(lm: LoadedModel, layers: Sequence[int], paragraphs: Sequence[str]) -> KeyStatistics:
    names = {layer: block_path(lm, layer, lm.adapter.out_proj) for layer in layers}
    sums = {layer: None for layer in layers}
    n_tokens = 0
    for start in range(0, len(paragraphs), _CHUNK):
        batch = encode(lm, paragraphs[start : start + _CHUNK])
        mask = _content_mask(batch)
        trace = run(lm, batch, record_inputs=list(names.values()), stop_after=names[max(layers)])
        n_tokens += int(mask.sum())
        for layer, name in names.items():
            keys = trace.inputs[name][mask].float()  # [tokens, d_in]
            moment = keys.T @ keys
            sums[layer] = moment if sums[layer] is None else sums[layer] + moment
    return KeyStatistics({layer: (s / n_tokens).cpu() for layer, s in sums.items()}, n_tokens)


def key_statistics(lm: LoadedModel, layers: Sequence[int], cache_dir: Path | None) -> KeyStatistics:
    """The second moments of ``layers``, read from ``cache_dir`` or measured (on the pristine model) and cached.

    Call it on the base model: a worker asks before any edit is active. The cache key is the base
    model's fingerprint and the sample's digest, so every worker of one model reads the same file.
    """
    paragraphs = statistics_paragraphs()
    wanted = sorted(set(layers))
    folder = None if cache_dir is None else cache_dir / "keystats" / lm.fingerprint / _sample_digest(paragraphs)
    found: dict[int, torch.Tensor] = {}
    n_tokens = 0
    if folder is not None:
        for layer in wanted:
            path = folder / f"layer-{layer}.safetensors"
            if path.is_file():
                loaded = load_file(path)
                found[layer], n_tokens = loaded["second_moment"], int(loaded["n_tokens"])
    missing = [layer for layer in wanted if layer not in found]
    if missing:
        measured = _measure(lm, missing, paragraphs)
        n_tokens = measured.n_tokens
        found.update(measured.second_moments)
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for layer in missing:
                tmp = folder / f".layer-{layer}.tmp"
                tensors = {"second_moment": found[layer].contiguous(), "n_tokens": torch.tensor(n_tokens)}
                save_file(tensors, str(tmp))
                tmp.replace(folder / f"layer-{layer}.safetensors")
    return KeyStatistics(found, n_tokens)
