"""`creme eval` and `creme lens` as a user runs them (subprocesses on the embedded model)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli.common import parse_layers
from tests.e2e.support import REPO, creme_env
from tests.support import png_size

SAMPLE = REPO / "tests" / "data" / "mquake_sample.jsonl"


def test_parse_layers() -> None:
    assert parse_layers("10-12") == [10, 11, 12]
    assert parse_layers("3,5,10-11") == [3, 5, 10, 11]
    for bad in ("", "12-10", "a-b", "1,,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_layers(bad)


def _creme(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=creme_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_eval_writes_summary_table_and_plots(tmp_path: Path) -> None:
    out, figures = tmp_path / "report.json", tmp_path / "figures"
    done = _creme("eval", str(SAMPLE), "--limit", "3", "--layers", "10-20", "--json", str(out), "--plots", str(figures))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    summary = report["summary"]
    assert summary["n_cases"] == 3 and summary["n_failing"] == 1 and summary["layers"] == list(range(10, 21))
    assert summary["edit_seconds_median"] > 0
    for name in ("correction", "paraphrase", "generalization", "specificity"):
        for key in ("win_rate_pre", "win_rate_post", "greedy_acc_pre", "greedy_acc_post", "mean_rel_change"):
            assert key in summary[name]
    assert "leakage_mean_rel_change" in summary["specificity"]
    assert summary["correction"]["share_increased"] == 1.0
    [case] = report["cases"]
    assert case["id"] == "mquake-2hop-0072" and case["p_post"] > case["p_pre"]
    assert "mquake-2hop-0072" in done.stdout and "correction" in done.stdout
    written = [figures / "eval-summary.png", figures / "eval-cases.png"]
    assert sorted(figures.iterdir()) == sorted(written)
    for path in written:
        assert f"wrote {path}" in done.stderr
        width, height = png_size(path.read_bytes())
        assert width > 300 and height > 200


def test_eval_reports_a_missing_file_clearly(tmp_path: Path) -> None:
    done = _creme("eval", str(tmp_path / "nope.jsonl"))
    assert done.returncode == 2 and "nope.jsonl" in done.stderr


@pytest.mark.slow
def test_lens_prints_a_table() -> None:
    done = _creme("lens", "The capital of Japan is", "--target", "Tokyo", "--top-k", "3")
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.strip()[:2].strip().isdigit()]
    assert len(rows) == 30 and "Tokyo" in done.stdout
