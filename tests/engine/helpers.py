"""Helpers for the engine tests: cases from tests/data (MQuAKE-derived; see tests/data/README.md), and a check
that an analysis leaves the model as it found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from service.engine.cases import TwoHopCase, load_cases
from service.engine.loading import LoadedModel

DATA = Path(__file__).resolve().parents[1] / "data" / "mquake_sample.jsonl"
FAILING_IDS = (
    "mquake-2hop-0072",
    "mquake-2hop-0085",
    "mquake-2hop-0158",
    "mquake-2hop-0205",
    "mquake-2hop-0295",
    "mquake-2hop-0394",
)


def sample_cases() -> list[TwoHopCase]:
    return load_cases(DATA)


def failing_case(case_id: str = "mquake-2hop-0394") -> TwoHopCase:
    return next(c for c in sample_cases() if c.id == case_id)


@contextmanager
def leaves_model_unchanged(lm: LoadedModel) -> Iterator[None]:
    """Assert that every parameter and buffer is bit-identical afterwards and that no hook remains."""
    before = {name: t.detach().clone() for name, t in lm.model.state_dict().items()}
    blocks = list(lm.adapter.block_list(lm.model))
    yield
    after = lm.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert list(lm.adapter.block_list(lm.model)) == blocks
    for module in lm.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
