"""Test cases from tests/data (MQuAKE-derived; see tests/data/README.md)."""

from __future__ import annotations

from pathlib import Path

from service.cases import TwoHopCase, load_cases

DATA = Path(__file__).resolve().parents[1] / "data" / "mquake_sample.jsonl"
FAILING_IDS = ("mquake-2hop-0072", "mquake-2hop-0085", "mquake-2hop-0158", "mquake-2hop-0295", "mquake-2hop-0394")


def sample_cases() -> list[TwoHopCase]:
    return load_cases(DATA)


def failing_case(case_id: str = "mquake-2hop-0394") -> TwoHopCase:
    return next(c for c in sample_cases() if c.id == case_id)
