"""Figures of a ``creme eval`` report (:func:`service.dataset_eval.evaluate_dataset`): the summary and each case."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.plots import (
    AFTER,
    BEFORE,
    WIN_RATE,
    Format,
    NotPlottable,
    draw,
    evaluated_sets,
    new_figure,
    render,
    row_height,
    set_bars,
    shorten,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIXED, NOT_FIXED = "#2e9e44", "#d1495b"


def _summary_figure(report: Mapping[str, Any]) -> Figure:
    """Greedy accuracy and win rate before/after per query set, pooled; the share of cases fixed, safe, harmless."""
    summary = report["summary"]
    failing = int(summary["n_failing"])
    if failing == 0:
        raise NotPlottable("the report has no failing case: nothing was edited")
    sets = evaluated_sets(summary)
    fig = new_figure(13.0 if sets else 5.0, 4.6)
    axes = fig.subplot_mosaic([["acc", "win", "outcome"]] if sets else [["outcome"]])
    if sets:
        set_bars(axes["acc"], sets, "greedy_acc", "greedy accuracy, pooled")
        set_bars(axes["win"], sets, "win_rate", WIN_RATE)
        axes["acc"].legend(fontsize=8, loc="upper left")
    outcomes = [
        ("fixed", int(summary["fixed"])),
        ("safe", int(summary["safe"])),
        ("every canary\nkept", int(summary["all_canaries_kept"])),
    ]
    ax = axes["outcome"]
    drawn = ax.bar([o[0] for o in outcomes], [100 * k / failing for _, k in outcomes], color=[FIXED, AFTER, BEFORE])
    ax.bar_label(drawn, labels=[f"{k}/{failing}" for _, k in outcomes], fontsize=8)
    ax.set_ylim(0, 112)
    ax.set_ylabel("% of the edited cases", fontsize=9)
    ax.set_title("outcome of each edit", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    layers = summary.get("layers") or []
    band = f"layers {min(layers)}–{max(layers)}" if layers else "default layers"
    stacked = ", stacked" if summary.get("stacked") else ""
    fig.suptitle(
        f"creme eval: {failing} of {summary.get('n_cases', '?')} cases fail compositionally and were edited"
        f"\n{summary.get('method', '?')} method, {band}, {summary.get('judge', '?')} judge{stacked}",
        fontsize=10,
    )
    return fig


def _cases_figure(report: Mapping[str, Any]) -> Figure:
    """Per case: p(answer) on its own query before → after (coloured by fixed), and the canary facts it kept."""
    from matplotlib.lines import Line2D

    cases = report["cases"]
    if not cases:
        raise NotPlottable("the report has no edited case")
    n = len(cases)
    with_p = any("p_pre" in case for case in cases)
    fig = new_figure(11.0 if with_p else 6.0, 1.9 + row_height(n) * n)
    axes = fig.subplots(1, 2 if with_p else 1, sharey=True, squeeze=False, width_ratios=[2, 1] if with_p else None)[0]
    colours = [FIXED if case["fixed"] else NOT_FIXED for case in cases]
    if with_p:
        ax = axes[0]
        for i, (case, colour) in enumerate(zip(cases, colours, strict=True)):
            if "p_pre" in case:
                ax.plot([case["p_pre"], case["p_post"]], [i, i], color="0.75", linewidth=1, zorder=1)
                ax.scatter([case["p_pre"]], [i], color=BEFORE, s=18, zorder=2)
                ax.scatter([case["p_post"]], [i], color=colour, s=22, zorder=3)
        ax.set_xscale("log")
        ax.set_xlabel("p(answer) on the edited query (log scale)")
        ax.grid(axis="x", alpha=0.3)
        marker = {"marker": "o", "linestyle": "none"}
        fig.legend(
            handles=[
                Line2D([], [], color=BEFORE, label="before", **marker),
                Line2D([], [], color=FIXED, label="after, fixed", **marker),
                Line2D([], [], color=NOT_FIXED, label="after, not fixed", **marker),
            ],
            fontsize=8,
            loc="outside lower center",
            ncols=3,
            frameon=False,
        )
    kept = [case["safety"]["canaries"] for case in cases]
    ax = axes[-1]
    drawn = ax.barh(range(n), [100 * c["kept"] / max(c["checked"], 1) for c in kept], color=colours)
    ax.bar_label(drawn, labels=[f"{c['kept']}/{c['checked']}" for c in kept], fontsize=6, padding=2)
    ax.set_xlim(0, 118)
    ax.set_xlabel("canary facts kept (%)")
    axes[0].set_yticks(range(n), labels=[shorten(str(case["id"]), 24) for case in cases], fontsize=7 if n <= 40 else 5)
    axes[0].invert_yaxis()
    fixed = sum(case["fixed"] for case in cases)
    fig.suptitle(f"creme eval, per case: {fixed} of {n} edits fix their query (greedy)", fontsize=10)
    return fig


def plot_eval_summary(report: Mapping[str, Any], fmt: Format = "png") -> bytes:
    """The summary of a ``creme eval`` report as before/after bars per query set and the fix rate."""
    return render(draw(_summary_figure, report, "eval report"), fmt)


def plot_eval_cases(report: Mapping[str, Any], fmt: Format = "png") -> bytes:
    """Every case of a ``creme eval`` report: p(answer) before → after and the canaries it kept."""
    return render(draw(_cases_figure, report, "eval report"), fmt)


def write_eval_plots(report: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Write ``eval-summary.png`` and ``eval-cases.png`` for ``report`` into ``out_dir`` (made if missing).

    A figure the report has nothing for (no failing case) is not written; returns the files written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, plot in (("eval-summary", plot_eval_summary), ("eval-cases", plot_eval_cases)):
        try:
            data = plot(report, "png")
        except NotPlottable:
            continue
        path = out_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
    return written
