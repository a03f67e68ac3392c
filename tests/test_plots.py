"""Figures of real analysis results of the tiny model, of edit metrics and of eval reports.

Each is checked as PNG (decoded, of a sensible size) and as SVG, whose text says what it shows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import matplotlib
import pytest

from service import plots
from service.engine.creme import CompositionalQuery
from service.engine.evaluate import SET_NAMES, SetMetrics
from service.engine.intervene import intervene
from service.engine.lens import logit_lens
from service.engine.loading import LoadedModel
from service.engine.locate import KINDS, locate
from service.eval_plots import plot_eval_cases, plot_eval_summary, write_eval_plots
from service.plots import (
    NotPlottable,
    plot_analysis,
    plot_compositionality,
    plot_edit,
    plot_intervention,
    plot_locate,
    plot_logit_lens,
    token_label,
)
from tests.support import png_size

PROMPT = "The capital of the country where Mount Fuji is located is"
QUERY = CompositionalQuery(PROMPT, "the country where Mount Fuji is located", "Japan")
SVG = "{http://www.w3.org/2000/svg}"
ROOT = Path(__file__).resolve().parents[1]


def svg_texts(data: bytes) -> list[str]:
    """The text of every ``<text>`` element of SVG ``data`` (which must parse as XML): one per line drawn."""
    root = ET.fromstring(data)
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def drawn(label: str) -> str:
    """A label as the SVG holds it: matplotlib draws an escaped ``\\$`` as ``$``."""
    return label.replace(r"\$", "$")


@pytest.fixture(scope="module")
def lens(tiny_llama: LoadedModel) -> dict[str, Any]:
    return logit_lens(tiny_llama, PROMPT, ["Tokyo", "Japan", "$5 " + "x" * 60], top_k=3).to_dict()


def test_logit_lens_heatmap_names_targets_ranks_and_each_layers_top_token(lens: dict[str, Any]) -> None:
    width, height = png_size(plot_logit_lens(lens, "png"))
    assert 500 <= width <= 1400 and 350 <= height <= 1900, (width, height)
    texts = svg_texts(plot_logit_lens(lens, "svg"))
    assert {"Tokyo", "Japan", "target (cells: rank, 1 = most likely)", "top-1 token and its p"} <= set(texts)
    long_target = [t for t in texts if t.startswith("$5 xxx")]
    assert long_target and all(len(t) <= 16 and t.endswith("…") for t in long_target)  # cut, and drawn as is
    for entry in lens["layers"]:
        top = entry["top"][0]
        assert f"{drawn(token_label(top['token']))} {top['prob']:.2f}" in texts
        for stat in entry["targets"]:
            assert f"#{stat['rank']}" in texts
    assert any("p(target)" in t and "log scale" in t for t in texts)


def test_a_logit_lens_without_targets_is_not_plottable(tiny_llama: LoadedModel) -> None:
    result = logit_lens(tiny_llama, PROMPT, []).to_dict()
    with pytest.raises(NotPlottable, match="no targets"):
        plot_logit_lens(result)


def test_locate_heatmaps_mark_the_edit_band_given(tiny_llama: LoadedModel) -> None:
    result = locate(tiny_llama, QUERY, "Tokyo", window=2).to_dict()
    png = plot_locate(result, "png", edit_band=[1, 2])
    width, height = png_size(png)
    assert 450 <= width <= 1800 and 350 <= height <= 900, (width, height)
    texts = svg_texts(plot_analysis("locate", result, "svg", edit_band=[1, 2]))
    assert "default edit band, layers 1–2" in texts
    assert {"hidden state (block output)", "layer patched", "Δp(answer): patched − unpatched"} <= set(texts)
    assert sum(t.startswith(("MLP output", "attention output")) for t in texts) == len(KINDS) - 1
    assert f"subject token {drawn(token_label(result['subject_tokens'][0]))}" in texts
    assert not any("edit band" in t for t in svg_texts(plot_locate(result, "svg")))  # no band given, none drawn


def test_intervention_curves(tiny_llama: LoadedModel) -> None:
    result = intervene(tiny_llama, PROMPT, "Japan", "Tokyo", layers=[0, 1, 3]).to_dict()
    width, height = png_size(plot_intervention(result, "png"))
    assert (width, height) == (880, 484)  # 8 x 4.4 inches at 110 dpi
    texts = svg_texts(plot_analysis("intervention", result, "svg"))
    assert {"no edit", "'Japan' suppressed", "p('Tokyo') at the last position"} <= set(texts)
    assert f"control: {len(result['control_token_ids'])} random tokens suppressed" in texts


GAP = {"n": 8, "judge": "published", "hop1_acc": 0.5, "hop2_acc": 0.75, "composition_acc": 0.25, "both_hops": 4,
       "gap": 0.5, "failing_ids": ["a", "b"], "checks": []}  # fmt: skip


def test_compositionality_bars_count_cases() -> None:
    texts = svg_texts(plot_compositionality(GAP, "svg"))
    assert {"first hop", "second hop", "composition", "share of cases (%)"} <= set(texts)
    assert {"50%", "4/8", "75%", "6/8", "25%", "2/8", "2/4", "composition wrong"} <= set(texts)
    screened = svg_texts(plot_analysis("compositionality", {**GAP, "hop2_acc": None, "composition_acc": None}, "svg"))
    assert "first hop" in screened and "second hop" not in screened and "composition" not in screened


def _set(n: int, pre: float, post: float) -> dict[str, Any]:
    return replace(
        SetMetrics(n=n), p_pre_mean=pre / 10, p_post_mean=post / 2, win_rate_pre=pre, win_rate_post=post,
        greedy_acc_pre=pre, greedy_acc_post=post,
    ).to_dict()  # fmt: skip


METRICS = {
    "correction": _set(1, 0.0, 1.0),
    "paraphrase": _set(2, 0.5, 1.0),
    "generalization": SetMetrics(n=0).to_dict(),
    "specificity": _set(4, 0.25, 0.5),
    "judge": "published",
    "method": "local",
    "generic_kl": 0.0021,
    "safety": {"safe": True, "canaries": {"checked": 56, "kept": 55, "regressions": []}},
    "delta_norms": {"10": 0.5, "11": 0.75, "12": 0.25},
}


def test_edit_bars_before_and_after_per_query_set_and_norms_per_layer() -> None:
    width, height = png_size(plot_edit(METRICS, "png", title="Edit e1: 'Q' → 'A'"))
    assert (width, height) == (1430, 814)  # 13 x 7.4 inches at 110 dpi
    texts = svg_texts(plot_edit(METRICS, "svg", title="Edit e1: 'Q' → 'A'"))
    assert {"correction", "n=1", "paraphrase", "n=2", "specificity", "n=4", "before", "after"} <= set(texts)
    assert "generalization" not in texts  # an empty set has nothing to show
    assert {"greedy accuracy", "mean p(answer)", "‖ΔW‖ (Frobenius norm)", "edited layer", "10", "11", "12"} <= set(
        texts
    )
    assert "Edit e1: 'Q' → 'A'" in texts
    assert "local method, published judge, generic-text drift 0.0021 nats/token, canaries kept 55/56" in texts
    assert {"0", "100", "50", "25"} <= set(texts)  # bar labels: greedy accuracy and win rate in percent


def test_the_plots_know_every_query_set_of_the_evaluation() -> None:
    assert plots.SET_NAMES == SET_NAMES  # copied, so that the gateway need not import torch


def test_an_edit_with_only_its_norms_plots_them_and_one_with_nothing_is_not_plottable() -> None:
    texts = svg_texts(plot_edit({"delta_norms": {"4": 0.5, "5": 0.25}}, "svg"))
    assert "size of the update per edited layer" in texts and "greedy accuracy" not in texts
    with pytest.raises(NotPlottable, match="no evaluated query set and no delta norms"):
        plot_edit({"generalization": SetMetrics(n=0).to_dict()})


@pytest.mark.parametrize(
    ("kind", "result", "message"),
    [
        ("logit-lens", {"prompt": "p", "targets": ["a"]}, "lacks what its plot needs"),
        ("locate", {"layers": []}, "lacks what its plot needs"),
        ("intervention", {"layers": []}, "no layers"),
        ("compositionality", [1, 2], "not an object"),
        ("generate", {"text": "x"}, "a generate job has no plot"),
    ],
)
def test_malformed_or_unknown_results_are_not_plottable(kind: str, result: Any, message: str) -> None:
    with pytest.raises(NotPlottable, match=message):
        plot_analysis(kind, result, "png")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="use png or svg"):
        plot_compositionality(GAP, "jpg")  # type: ignore[arg-type]


def _case(i: int, fixed: bool) -> dict[str, Any]:
    return {"id": f"mquake-{i}-" + "z" * 40, "fixed": fixed, "p_pre": 0.01 * (i + 1), "p_post": 0.2 * (i + 1),
            "safety": {"canaries": {"checked": 56, "kept": 56 - i}}}  # fmt: skip


REPORT = {
    "summary": {
        "n_cases": 700, "n_failing": 3, "fixed": 2, "safe": 1, "all_canaries_kept": 1, "method": "auto",
        "judge": "published", "layers": list(range(10, 21)), "stacked": False,
        **{name: METRICS[name] for name in SET_NAMES},
    },
    "cases": [_case(0, True), _case(1, False), _case(2, True)],
}  # fmt: skip


def test_eval_summary_and_cases() -> None:
    texts = svg_texts(plot_eval_summary(REPORT, "svg"))
    assert {"fixed", "safe", "every canary", "2/3", "1/3", "% of the edited cases"} <= set(texts)
    assert {
        "creme eval: 3 of 700 cases fail compositionally and were edited",
        "auto method, layers 10–20, published judge",
    } <= set(texts)
    texts = svg_texts(plot_eval_cases(REPORT, "svg"))
    assert {"56/56", "55/56", "54/56", "canary facts kept (%)"} <= set(texts)
    assert "p(answer) on the edited query (log scale)" in texts
    labels = [t for t in texts if t.startswith("mquake-")]
    assert len(labels) == 3 and all(len(t) <= 24 and t.endswith("…") for t in labels)
    assert "creme eval, per case: 2 of 3 edits fix their query (greedy)" in texts


def test_write_eval_plots_writes_pngs_and_skips_what_a_report_lacks(tmp_path: Path) -> None:
    written = write_eval_plots(REPORT, tmp_path / "plots")
    assert [p.name for p in written] == ["eval-summary.png", "eval-cases.png"]
    assert all(png_size(p.read_bytes())[0] >= 500 for p in written)
    empty = {"summary": {**REPORT["summary"], "n_failing": 0, "fixed": 0}, "cases": []}
    assert write_eval_plots(empty, tmp_path / "none") == []
    assert list((tmp_path / "none").iterdir()) == []


def _rc() -> dict[str, Any]:
    """matplotlib's global settings as stored (reading ``backend`` the usual way would resolve it via pyplot)."""
    return dict(dict.items(matplotlib.rcParams))


def test_plots_leave_matplotlib_global_state_alone() -> None:
    before = _rc()
    for fmt in ("svg", "png"):
        plot_compositionality(GAP, fmt)  # type: ignore[arg-type]
    assert _rc() == before


def test_the_gateway_imports_no_matplotlib_and_plots_use_no_pyplot() -> None:
    code = (
        "import sys, json, api.app\n"
        "assert not [m for m in sys.modules if m.startswith('matplotlib')], 'imported at startup'\n"
        "from service.plots import plot_compositionality\n"
        f"plot_compositionality(json.loads({json.dumps(json.dumps(GAP))}), 'png')\n"
        "assert 'matplotlib' in sys.modules and 'matplotlib.pyplot' not in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
