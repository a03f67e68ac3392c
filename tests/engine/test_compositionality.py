"""The compositionality gap on the sample cases (real knowledge: the embedded model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.engine.cases import CaseFormatError, load_cases
from service.engine.compositionality import check_cases
from service.engine.loading import LoadedModel
from tests.engine.helpers import FAILING_IDS, sample_cases


def test_gap_finds_the_known_failures_with_and_without_screening(smol: LoadedModel) -> None:
    cases = sample_cases()
    full = check_cases(smol, cases)
    screened = check_cases(smol, cases, screen_hop1=True)
    assert sorted(full.failing_ids) == sorted(FAILING_IDS)
    assert screened.failing_ids == full.failing_ids
    assert full.n == len(cases) and full.both_hops >= len(FAILING_IDS)
    assert 0 < full.gap <= 1 and full.hop2_acc is not None and screened.hop2_acc is None
    for check in full.checks:
        assert check.worth_patching == (check.id in FAILING_IDS)


def test_case_files_report_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "cases.jsonl"
    good = (Path(__file__).resolve().parents[1] / "data" / "mquake_sample.jsonl").read_text().splitlines()[0]
    path.write_text(good + "\n\n" + '{"compositional": "x"}\n')
    with pytest.raises(CaseFormatError, match=r"cases.jsonl:3: missing or malformed field"):
        load_cases(path)
    path.write_text("not json\n")
    with pytest.raises(CaseFormatError, match=r":1:"):
        load_cases(path)
    assert load_cases(Path(__file__).resolve().parents[1] / "data" / "mquake_sample.jsonl", limit=2)[1].id
