"""Neighbour prompts of an edit: prompts whose last-token keys it must leave alone.

An edit writes to the key of its prompt's last token ("... is"), which every cloze prompt shares in
part. Two kinds of neighbours are protected (ΔW k ≈ 0):

- the edit's own prompt about other subjects: its hop-1 phrase ("the author of Misery") replaced
  by generic phrases ("the man", "the founder of the company", ...), so the update keeps only the
  part of the key that names this subject;
- generic prompts of other relations ("The capital of the country is", "The film was directed
  by", ...), so the update does not act on the cloze key of questions about something else.

Both are written for this project, name no entity and are never drawn from evaluation data.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery
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


RELATION_PROMPTS: tuple[str, ...] = (
    "The capital of the country is",
    "The city is located in",
    "The building is located in",
    "The river flows through",
    "The author of the book is",
    "The language spoken in the region is",
    "The currency of the country is",
    "The largest city of the state is",
    "The company was founded by",
    "The team plays in",
    "The singer was born in",
    "The film was directed by",
    "The head of the government is",
    "The mountain is located in",
    "The song was written by",
    "The university is located in",
    "The official language of the state is",
    "The leader of the party is",
    "The continent the island is on is",
    "The sport the club plays is",
)


def subject_prompts(prompt: str, hop1_phrase: str) -> list[str]:
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


def relation_prompts(prompt: str) -> list[str]:
    """The generic prompts of other relations, ``prompt`` itself never."""
    return [r for r in RELATION_PROMPTS if r.casefold() != prompt.strip().casefold()]


def neighbour_prompts(prompt: str, hop1_phrase: str) -> list[str]:
    """Every neighbour of an edit of ``prompt``: the subject neighbours, then the relation prompts."""
    return subject_prompts(prompt, hop1_phrase) + relation_prompts(prompt)


@torch.no_grad()
def neighbour_keys(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The last-token input of each layer's attention output projection for every prompt: layer → [n, d_in]."""
    names = {layer: block_path(lm, layer, lm.adapter.out_proj) for layer in layers}
    trace = run(lm, encode(lm, list(prompts)), record_inputs=list(names.values()), stop_after=names[max(layers)])
    return {layer: trace.inputs[name][:, -1].float().cpu() for layer, name in names.items()}


def edit_neighbour_keys(ctx: EditContext, query: CompositionalQuery, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """The keys of every neighbour of ``query`` on the state now: the relation prompts' read once per state."""
    own = neighbour_keys(ctx.lm, subject_prompts(query.prompt, query.hop1_phrase), layers)
    shared = relation_prompts(query.prompt)
    relations = ctx.per_state(
        ("relation-keys", tuple(shared), tuple(layers)), lambda: neighbour_keys(ctx.lm, shared, layers)
    )
    return {layer: torch.cat([own[layer], relations[layer]]) for layer in layers}
