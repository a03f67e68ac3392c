"""Locating: causal mediation by activation patching from the guide run into the failing run (CREME.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from service.engine.creme import CompositionalQuery
from service.engine.hooks import OutputEdit, block_path, resume_from, run, select_layers
from service.engine.inputs import find_phrase
from service.engine.lens import last_logits, unembed
from service.engine.loading import LoadedModel
from service.engine.prompts import Batch, answer_token_ids, encode

KINDS: tuple[str, ...] = ("hidden", "mlp", "attn")
POSITIONS: tuple[str, ...] = ("last", "subject")
_MAX_ROWS = 32  # patched rows per forward pass: bounds memory; smaller chunks resume from higher layers


@dataclass(frozen=True)
class LocateResult:
    """p(answer) of the failing run with one guide activation patched in, per layer, site kind and position."""

    prompt: str
    guide_prompt: str
    answer: str
    answer_token_ids: tuple[int, ...]
    window: int
    layers: tuple[int, ...]
    subject_tokens: tuple[str, str]  # the subject's last token in the failing and in the guide run
    baseline: float  # p(answer) of the unpatched failing run
    guide: float  # p(answer) of the guide run
    table: tuple[tuple[tuple[float, ...], ...], ...]  # [len(layers)][len(KINDS)][len(POSITIONS)]

    def patched(self, layer: int, kind: str, position: str) -> float:
        """Patched p(answer) at ``layer`` (a model layer index) for one site kind and position."""
        return self.table[self.layers.index(layer)][KINDS.index(kind)][POSITIONS.index(position)]

    def effect(self, layer: int, kind: str = "attn", position: str = "last") -> float:
        """Patched minus baseline p(answer)."""
        return self.patched(layer, kind, position) - self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "guide_prompt": self.guide_prompt,
            "answer": self.answer,
            "answer_token_ids": list(self.answer_token_ids),
            "window": self.window,
            "layers": list(self.layers),
            "kinds": list(KINDS),
            "positions": list(POSITIONS),
            "subject_tokens": list(self.subject_tokens),
            "baseline": self.baseline,
            "guide": self.guide,
            "table": [[list(cells) for cells in row] for row in self.table],
        }


def window_layers(layer: int, window: int, n_layers: int) -> range:
    """The ``window`` layers around ``layer`` whose MLP/attention outputs are patched, clipped to the model."""
    start = layer - window // 2
    return range(max(0, start), min(n_layers - 1, start + window - 1) + 1)


def _span(text: str, phrase: str) -> tuple[int, int]:
    """Character span of ``phrase`` in ``text`` as :func:`~service.engine.inputs.find_phrase` finds it."""
    span = find_phrase(text, phrase)
    if span is None:
        raise ValueError(f"{phrase!r} does not occur in {text!r}")
    return span


def _last_token_before(lm: LoadedModel, text: str, end: int, row_length: int) -> int:
    """Index (unpadded) of the last non-empty token of ``text`` that starts before character ``end``."""
    tokenizer = lm.tokenizer
    if not tokenizer.is_fast:  # no offsets: count the prefix's tokens after any leading special tokens
        ids = tokenizer("x")["input_ids"]
        leading = next((i for i, t in enumerate(ids) if t not in set(tokenizer.all_special_ids)), 0)
        return leading + len(tokenizer(text[:end], add_special_tokens=False)["input_ids"]) - 1
    enc = tokenizer(text, return_offsets_mapping=True)
    if len(enc["input_ids"]) != row_length:
        raise RuntimeError("tokenising one prompt differs from tokenising the batch")
    hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < end and b > a]
    if not hits:
        raise ValueError(f"no token of {text!r} lies before character {end}")
    return hits[-1]


def subject_positions(lm: LoadedModel, query: CompositionalQuery, batch: Batch) -> tuple[int, int]:
    """Padded positions of the subject's last token: hop1 phrase in row 0 (failing), bridge in row 1 (guide)."""
    seq = int(batch.input_ids.shape[1])
    lengths = [int(n) for n in batch.attention_mask.sum(-1)]  # [2] real tokens per row
    start, end = _span(query.prompt, query.hop1_phrase)
    texts_ends = ((query.prompt, end), (query.guide_prompt, start + len(query.bridge)))
    fail, guide = (
        seq - length + _last_token_before(lm, text, cut, length)
        for (text, cut), length in zip(texts_ends, lengths, strict=True)
    )
    return fail, guide


def _site_paths(lm: LoadedModel, layer: int, kind: str, window: int) -> list[str]:
    if kind == "hidden":
        return [block_path(lm, layer)]
    sub = lm.adapter.mlp if kind == "mlp" else lm.adapter.attn
    return [block_path(lm, i, sub) for i in window_layers(layer, window, lm.n_layers)]


def _first_layer(layer: int, kind: str, window: int) -> int:
    """The lowest layer a site patches."""
    return layer if kind == "hidden" else max(0, layer - window // 2)


def _patcher(rows: list[int], positions: list[int], sources: torch.Tensor) -> OutputEdit:
    """An output edit writing ``sources`` [n, d] into (row, position) pairs of a [batch, seq, d] output."""

    def edit(output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[rows, positions] = sources.to(output.dtype)
        return output

    return edit


@torch.no_grad()
def locate(
    lm: LoadedModel,
    query: CompositionalQuery,
    answer: str,
    *,
    window: int = 6,
    layers: Sequence[int] | None = None,
) -> LocateResult:
    """Patch guide-run activations into the failing run, site by site; the model is left unchanged.

    One clean pass over [failing, guide] (left-padded together) records every site; then copies of
    the failing row, one per (layer, kind, position), are run in batches, each with one site patched.
    """
    layers = select_layers(lm, layers)
    if window < 1:
        raise ValueError("window must be at least 1")
    ids = answer_token_ids(lm, answer)
    batch = encode(lm, [query.prompt, query.guide_prompt])  # [2, seq]
    seq = int(batch.input_ids.shape[1])
    subj_fail, subj_guide = subject_positions(lm, query, batch)
    # (failing position, guide position) for each entry of POSITIONS
    pos_pairs = ((seq - 1, seq - 1), (subj_fail, subj_guide))

    blocks = [block_path(lm, layer) for layer in range(lm.n_layers)]
    needed = sorted({p for layer in layers for kind in KINDS for p in _site_paths(lm, layer, kind, window)})
    norm = lm.adapter.final_norm
    clean = run(lm, batch, record_outputs=sorted({*needed, *blocks, norm}), stop_after=norm)
    base_probs = torch.softmax(unembed(lm, clean.outputs[norm][:, -1], apply_final_norm=False).float(), -1)
    baseline, guide = (float(base_probs[row, ids].mean()) for row in (0, 1))

    # One row per site; sorted by the lowest patched layer so each chunk resumes as high as it can.
    sites = [(layer, kind, pos) for layer in layers for kind in KINDS for pos in pos_pairs]
    first = [_first_layer(layer, kind, window) for layer, kind, _ in sites]
    order = sorted(range(len(sites)), key=first.__getitem__)
    patched = [0.0] * len(sites)
    for chunk_start in range(0, len(order), _MAX_ROWS):
        chunk = order[chunk_start : chunk_start + _MAX_ROWS]
        plans: dict[str, tuple[list[int], list[int], list[torch.Tensor]]] = {}
        for row, site in enumerate(chunk):
            layer, kind, (pos_f, pos_g) = sites[site]
            for path in _site_paths(lm, layer, kind, window):
                rows, positions, sources = plans.setdefault(path, ([], [], []))
                rows.append(row)
                positions.append(pos_f)
                sources.append(clean.outputs[path][1, pos_g])
        edits = {path: _patcher(r, p, torch.stack(s)) for path, (r, p, s) in plans.items()}
        failing = batch.repeat_first(len(chunk))  # copies of the failing row, [len(chunk), seq]
        # Blocks below the chunk's lowest patched layer see no patch: resume from the clean failing run.
        resume = resume_from(lm, clean, first[chunk[0]], len(chunk))
        probs = torch.softmax(last_logits(lm, failing, edits, resume=resume).float(), dim=-1)  # [rows, vocab]
        for site, p in zip(chunk, probs[:, ids].mean(-1).tolist(), strict=True):
            patched[site] = p

    cells = iter(patched)
    table = tuple(tuple(tuple(next(cells) for _ in POSITIONS) for _ in KINDS) for _ in layers)
    decode = lm.tokenizer.decode
    tokens = (decode([int(batch.input_ids[0, subj_fail])]), decode([int(batch.input_ids[1, subj_guide])]))
    return LocateResult(
        prompt=query.prompt,
        guide_prompt=query.guide_prompt,
        answer=answer,
        answer_token_ids=tuple(ids),
        window=window,
        layers=tuple(layers),
        subject_tokens=tokens,
        baseline=baseline,
        guide=guide,
        table=table,
    )


def suggest_layers(result: LocateResult, width: int) -> list[int]:
    """The contiguous band of ``width`` layers with the largest summed attn/last effect (patched - baseline).

    Only bands whose every layer is in ``result.layers`` qualify; ties go to the lowest band.
    """
    if width < 1:
        raise ValueError("width must be at least 1")
    effects = {layer: result.effect(layer, "attn", "last") for layer in result.layers}
    best: tuple[float, int] | None = None
    for start in result.layers:
        band = range(start, start + width)
        if all(layer in effects for layer in band):
            score = sum(effects[layer] for layer in band)
            if best is None or score > best[0]:
                best = (score, start)
    if best is None:
        raise ValueError(f"no band of {width} consecutive layers among the located layers")
    return list(range(best[1], best[1] + width))
