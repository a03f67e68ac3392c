"""Neighbour prompts of an edit: its own prompt about someone or something else, whose keys it must leave alone.

An edit writes to the key of its prompt's last token ("... is"), which every prompt of the same
relation shares. Replacing the prompt's hop-1 phrase ("the author of Misery") by generic phrases
("the man", "the founder of the company", ...) gives prompts of the same relation about other
subjects; protecting their keys (ΔW k ≈ 0) leaves the update only the part of the key that names
this subject, so questions about other subjects keep their answers. The phrases are written for
this project and never drawn from evaluation data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.engine.hooks import block_path, run
from service.engine.inputs import find_phrase
from service.engine.loading import LoadedModel
from service.engine.prompts import encode

NEIGHBOUR_PHRASES: tuple[str, ...] = (
    "the man",
    "the woman",
    "my neighbour",
    "the author of the book",
    "the singer of the song",
    "the founder of the company",
    "the director of the film",
    "the team",
    "the city",
    "the company",
    "the river",
    "the teacher",
    "the president of the club",
    "the university",
    "the painter",
    "this country",
    "the player",
    "the mayor of the town",
    "the band",
    "the scientist",
)


def neighbour_prompts(prompt: str, hop1_phrase: str) -> list[str]:
    """``prompt`` with its hop-1 phrase replaced by each generic phrase (capitalised at the start)."""
    span = find_phrase(prompt, hop1_phrase)
    if span is None:
        raise ValueError(f"hop1_phrase {hop1_phrase!r} does not occur in the prompt")
    start, end = span
    out = []
    for phrase in NEIGHBOUR_PHRASES:
        if phrase.casefold() == hop1_phrase.casefold():
            continue
        out.append(prompt[:start] + (phrase[0].upper() + phrase[1:] if start == 0 else phrase) + prompt[end:])
    return out


@torch.no_grad()
def neighbour_keys(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The last-token input of each layer's attention output projection for every prompt: layer → [n, d_in]."""
    names = {layer: block_path(lm, layer, lm.adapter.out_proj) for layer in layers}
    trace = run(lm, encode(lm, list(prompts)), record_inputs=list(names.values()), stop_after=names[max(layers)])
    return {layer: trace.inputs[name][:, -1].float().cpu() for layer, name in names.items()}
