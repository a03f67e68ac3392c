"""Figures of analysis results and edits, as PNG or SVG bytes (`creme eval` reports: :mod:`service.eval_plots`).

Pure functions of the JSON the service stores: a job's ``result``, an edit's ``metrics``. matplotlib
is imported inside the functions, so importing this module, as the gateway does, costs nothing.
Each figure is a :class:`matplotlib.figure.Figure` with its own Agg canvas: no pyplot, no global
figures, and the process-wide backend is never switched.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Format = Literal["png", "svg"]
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}
# The query sets of an edit's evaluation, as service.engine.evaluate.SET_NAMES (which imports torch).
SET_NAMES = ("correction", "paraphrase", "generalization", "specificity")
BEFORE, AFTER = "#a0a0a0", "#1f6fb4"
WIN_RATE = "win rate: p(answer) > p(the model's own answer)"
_DPI = 110
_SVG_LOCK = threading.Lock()  # svg.fonttype is only an rcParam: one SVG at a time sets it, then restores it
_KIND_TITLES = {"hidden": "hidden state (block output)", "mlp": "MLP output", "attn": "attention output"}


class NotPlottable(ValueError):
    """The result lacks what its figure needs; the message says what."""


def shorten(text: str, width: int = 40) -> str:
    """``text`` cut to ``width`` characters (an ellipsis marks the cut), ``$`` escaped so it is drawn as is."""
    text = text if len(text) <= width else text[: width - 1] + "…"
    return text.replace("$", r"\$")


def token_label(token: str, width: int = 16) -> str:
    """A token quoted with escapes, so leading spaces and newlines show, cut to ``width`` characters."""
    return shorten(repr(token), width)


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` by ``height`` inches on its own Agg canvas, laid out by constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def render(fig: Figure, fmt: Format) -> bytes:
    """``fig`` as PNG or SVG bytes; SVG keeps its text as ``<text>`` elements, so it can be read and searched."""
    from matplotlib import rc_context

    buffer = io.BytesIO()
    if fmt == "png":
        fig.savefig(buffer, format="png", dpi=_DPI)
    elif fmt == "svg":
        with _SVG_LOCK, rc_context({"svg.fonttype": "none"}):
            fig.savefig(buffer, format="svg", metadata={"Date": None})
    else:
        raise ValueError(f"unknown image format {fmt!r}: use png or svg")
    return buffer.getvalue()


def draw(build: Callable[[Mapping[str, Any]], Figure], data: Mapping[str, Any], what: str) -> Figure:
    """``build(data)``; a stored result missing a field (or of the wrong shape) is :class:`NotPlottable`."""
    if not isinstance(data, Mapping):
        raise NotPlottable(f"the {what} is not an object")
    try:
        return build(data)
    except (KeyError, TypeError, IndexError) as exc:
        raise NotPlottable(f"the {what} lacks what its plot needs ({type(exc).__name__}: {exc})") from exc


def row_height(rows: int) -> float:
    """Inches per row of a figure with one row per layer or case: readable, and at most ~16 inches in all."""
    return min(0.28, 16.0 / max(rows, 1))


def _tick_size(rows: int) -> float:
    return 8.0 if rows <= 40 else 5.5


# -- analyses ------------------------------------------------------------------------------------


def _lens_figure(result: Mapping[str, Any]) -> Figure:
    """Layers by targets: p(target) as colour (log scale), its rank in each cell, each layer's top-1 beside its row."""
    from matplotlib.colors import LogNorm

    layers, targets = result["layers"], [str(t) for t in result["targets"]]
    if not layers:
        raise NotPlottable("the logit lens has no layers")
    if not targets:
        raise NotPlottable("the logit lens has no targets to plot: submit it with `targets`")
    probs = [[float(s["prob"]) for s in entry["targets"]] for entry in layers]
    ranks = [[int(s["rank"]) for s in entry["targets"]] for entry in layers]
    positive = [p for row in probs for p in row if p > 0]
    top = max(positive, default=1.0)
    low = max(min(positive, default=top), top * 1e-9)
    norm = LogNorm(vmin=low if low < top else top / 10, vmax=top, clip=True)
    n = len(layers)
    fig = new_figure(4.6 + 1.0 * len(targets), 2.2 + row_height(n) * n)
    ax = fig.add_subplot()
    image = ax.imshow(probs, norm=norm, cmap="viridis", aspect="auto", origin="lower", interpolation="nearest")
    size = _tick_size(n)
    for i, row in enumerate(ranks):
        for j, rank in enumerate(row):
            dark = norm(max(probs[i][j], norm.vmin)) < 0.55
            ax.text(j, i, f"#{rank}", ha="center", va="center", fontsize=size - 1, color="white" if dark else "black")
    ax.set_xticks(range(len(targets)), labels=[shorten(t, 16) for t in targets], fontsize=9)
    ax.set_yticks(range(n), labels=[str(entry["layer"]) for entry in layers], fontsize=size)
    ax.set_xlabel("target (cells: rank, 1 = most likely)")
    ax.set_ylabel("layer (its output read through the unembedding)")
    best = [entry["top"][0] if entry["top"] else {"token": "", "prob": 0.0} for entry in layers]
    right = ax.secondary_yaxis("right")
    right.set_yticks(range(n), labels=[f"{token_label(b['token'])} {float(b['prob']):.2f}" for b in best])
    right.tick_params(labelsize=size)
    right.set_ylabel("top-1 token and its p")
    fig.colorbar(image, ax=ax, location="bottom", shrink=0.8, aspect=30).set_label(
        "p(target): mean over its sub-tokens (log scale)"
    )
    ax.set_title(
        f"Logit lens after {token_label(str(result['token']))}\n{shorten(str(result['prompt']), 70)}", fontsize=10
    )
    return fig


def _locate_figure(result: Mapping[str, Any], edit_band: Sequence[int] | None) -> Figure:
    """Δp(answer) from patching each site, layers by position, one panel per site kind; the edit band outlined."""
    from matplotlib.colors import CenteredNorm
    from matplotlib.patches import Rectangle

    layers, kinds, positions = list(result["layers"]), list(result["kinds"]), list(result["positions"])
    if not layers:
        raise NotPlottable("the locating result has no layers")
    baseline, guide = float(result["baseline"]), float(result["guide"])
    table = result["table"]  # [layer][kind][position]: patched p(answer)
    effects = [[[float(table[i][k][p]) - baseline for i in range(len(layers))] for p in range(len(positions))]
               for k in range(len(kinds))]  # fmt: skip
    half = max((abs(v) for panel in effects for row in panel for v in row), default=0.0) or 1e-9
    subject = token_label(str(result["subject_tokens"][0]))
    labels = [f"subject token {subject}" if p == "subject" else f"{p} token" for p in positions]
    n = len(layers)
    fig = new_figure(min(16.0, 3.6 + 0.32 * n), 1.9 + 1.25 * len(kinds))
    axes = fig.subplots(len(kinds), 1, sharex=True, squeeze=False)[:, 0]
    cols = [i for i, layer in enumerate(layers) if edit_band and layer in edit_band]
    band = None
    for ax, kind, panel in zip(axes, kinds, effects, strict=True):
        image = ax.imshow(panel, cmap="RdBu_r", norm=CenteredNorm(0.0, half), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(positions)), labels=labels, fontsize=8)
        window = "" if kind == "hidden" else f", {result['window']} layers around each"
        ax.set_title(f"{_KIND_TITLES.get(kind, kind)}{window}", fontsize=9, loc="left")
        if cols:
            band = Rectangle((min(cols) - 0.5, -0.5), max(cols) - min(cols) + 1, len(positions), fill=False,
                             edgecolor="black", linewidth=1.6, linestyle="--")  # fmt: skip
            ax.add_patch(band)
    axes[-1].set_xticks(range(n), labels=[str(layer) for layer in layers], fontsize=_tick_size(n))
    axes[-1].set_xlabel("layer patched")
    fig.colorbar(image, ax=list(axes), shrink=0.9).set_label("Δp(answer): patched − unpatched")
    if band is not None:
        band.set_label(f"default edit band, layers {layers[min(cols)]}–{layers[max(cols)]}")
        fig.legend(handles=[band], loc="outside lower right", fontsize=8, frameon=False)
    fig.suptitle(
        f"Locating: the guide run's activations patched into the failing run, p({shorten(str(result['answer']), 24)!r})"
        f"\nunpatched p = {baseline:.3g}, guide p = {guide:.3g}; {shorten(str(result['prompt']), 70)}",
        fontsize=10,
    )
    return fig


def _intervention_figure(result: Mapping[str, Any]) -> Figure:
    """p(answer) per edited layer with the bridge suppressed, with a random-token control and the unedited baseline."""
    from matplotlib.ticker import MaxNLocator

    entries = result["layers"]
    if not entries:
        raise NotPlottable("the intervention result has no layers")
    xs = [int(e["layer"]) for e in entries]
    bridge, answer = shorten(str(result["bridge"]), 24), shorten(str(result["answer"]), 24)
    fig = new_figure(8.0, 4.4)
    ax = fig.add_subplot()
    ax.axhline(float(entries[0]["baseline"]), color="0.35", linestyle="--", linewidth=1.2, label="no edit")
    ax.plot(xs, [float(e["suppressed"]) for e in entries], marker="o", markersize=3.5, label=f"{bridge!r} suppressed")
    count = len(result.get("control_token_ids") or ()) or "as many"
    ax.plot(xs, [float(e["control"]) for e in entries], marker="s", markersize=3.5, color="#d98c1f",
            label=f"control: {count} random tokens suppressed")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer whose residual stream is edited (last position)")
    ax.set_ylabel(f"p({answer!r}) at the last position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        f"Intervention: p({answer!r}) with {bridge!r} suppressed layer by layer\n{shorten(str(result['prompt']), 70)}",
        fontsize=10,
    )
    return fig


def _compositionality_figure(result: Mapping[str, Any]) -> Figure:
    """Accuracy on each hop and on the composition, and the gap, as bars over their cases."""
    n, both = int(result["n"]), int(result["both_hops"])
    if n == 0:
        raise NotPlottable("the compositionality check has no cases")
    candidates = [
        ("first hop", result["hop1_acc"], n),
        ("second hop", result.get("hop2_acc"), n),
        ("composition", result.get("composition_acc"), n),
        ("gap: both hops right,\ncomposition wrong", result["gap"] if both else None, both),
    ]
    bars = [(label, float(share), of) for label, share, of in candidates if share is not None]
    fig = new_figure(1.9 + 1.5 * len(bars), 4.4)
    ax = fig.add_subplot()
    drawn = ax.bar([b[0] for b in bars], [100 * b[1] for b in bars], color=["#6b9bd1"] * (len(bars) - 1) + ["#d1495b"])
    ax.bar_label(drawn, labels=[f"{share:.0%}\n{round(share * of)}/{of}" for _, share, of in bars], fontsize=8)
    ax.set_ylim(0, 115)
    ax.set_ylabel("share of cases (%)")
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Compositionality gap over {n} cases ({result.get('judge', 'published')} judge)", fontsize=10)
    return fig


def plot_logit_lens(result: Mapping[str, Any], fmt: Format = "png") -> bytes:
    """A logit-lens result (:meth:`~service.engine.lens.LensResult.to_dict`) as a heatmap."""
    return render(draw(_lens_figure, result, "logit-lens result"), fmt)


def plot_locate(result: Mapping[str, Any], fmt: Format = "png", *, edit_band: Sequence[int] | None = None) -> bytes:
    """A locating result (:meth:`~service.engine.locate.LocateResult.to_dict`) as heatmaps; ``edit_band`` outlined."""
    return render(draw(lambda r: _locate_figure(r, edit_band), result, "locating result"), fmt)


def plot_intervention(result: Mapping[str, Any], fmt: Format = "png") -> bytes:
    """An intervention result (:meth:`~service.engine.intervene.InterventionResult.to_dict`) as curves."""
    return render(draw(_intervention_figure, result, "intervention result"), fmt)


def plot_compositionality(result: Mapping[str, Any], fmt: Format = "png") -> bytes:
    """A compositionality-gap report (:meth:`~service.engine.compositionality.GapReport.to_dict`) as bars."""
    return render(draw(_compositionality_figure, result, "compositionality result"), fmt)


def plot_analysis(
    kind: str, result: Mapping[str, Any], fmt: Format = "png", *, edit_band: Sequence[int] | None = None
) -> bytes:
    """The figure of an analysis job's result by its kind; ``edit_band`` is outlined on a locating plot."""
    if kind == "locate":
        return plot_locate(result, fmt, edit_band=edit_band)
    plot = {
        "logit-lens": plot_logit_lens,
        "intervention": plot_intervention,
        "compositionality": plot_compositionality,
    }.get(kind)
    if plot is None:
        raise NotPlottable(f"a {kind} job has no plot")
    return plot(result, fmt)


# -- edits ---------------------------------------------------------------------------------------


def _percent(value: Any) -> float:
    return float("nan") if value is None else 100 * float(value)


def set_bars(ax: Axes, sets: Mapping[str, Mapping[str, Any]], key: str, title: str, *, percent: bool = True) -> None:
    """Before/after bars of ``key``_pre/_post (or p_pre_mean/p_post_mean for ``key`` "p") for each query set."""
    names = list(sets)
    pre_key, post_key = ("p_pre_mean", "p_post_mean") if key == "p" else (f"{key}_pre", f"{key}_post")
    width = 0.38
    for offset, field, label, colour in ((-1, pre_key, "before", BEFORE), (1, post_key, "after", AFTER)):
        values = [sets[name].get(field) for name in names]
        heights = [_percent(v) if percent else float("nan" if v is None else v) for v in values]
        xs = [i + offset * width / 2 for i in range(len(names))]
        drawn = ax.bar(xs, heights, width, label=label, color=colour)
        texts = ["" if v is None else (f"{100 * float(v):.0f}" if percent else f"{float(v):.2g}") for v in values]
        ax.bar_label(drawn, labels=texts, fontsize=7)
    ax.set_xticks(range(len(names)), labels=[f"{name}\nn={sets[name].get('n', 0)}" for name in names], fontsize=8)
    ax.set_title(title, fontsize=9)
    if percent:
        ax.set_ylim(0, 112)
        ax.set_ylabel("% of the set's queries", fontsize=9)
    else:
        ax.set_yscale("log")
        ax.set_ylabel("p (log scale)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def evaluated_sets(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The query sets in ``metrics`` with at least one query, in the evaluation's order."""
    return {
        name: metrics[name]
        for name in SET_NAMES
        if isinstance(metrics.get(name), Mapping) and int(metrics[name].get("n") or 0) > 0
    }


def _edit_figure(metrics: Mapping[str, Any], title: str | None) -> Figure:
    """Greedy accuracy, win rate and mean p(answer) before/after per query set; ‖ΔW‖ per edited layer."""
    sets = evaluated_sets(metrics)
    norms = metrics.get("delta_norms")
    norms = sorted((int(layer), float(v)) for layer, v in norms.items()) if isinstance(norms, Mapping) else []
    if not sets and not norms:
        raise NotPlottable("the edit's metrics have no evaluated query set and no delta norms")
    mosaic = ([["acc", "win", "p"]] if sets else []) + ([["norms"] * (3 if sets else 1)] if norms else [])
    fig = new_figure(13.0 if sets else 7.0, 1.0 + 3.2 * len(mosaic))
    axes = fig.subplot_mosaic(mosaic, height_ratios=[1.3, 1] if len(mosaic) == 2 else None)
    if sets:
        set_bars(axes["acc"], sets, "greedy_acc", "greedy accuracy")
        set_bars(axes["win"], sets, "win_rate", WIN_RATE)
        set_bars(axes["p"], sets, "p", "mean p(answer)", percent=False)
        axes["acc"].legend(fontsize=8, loc="upper left")
    if norms:
        ax = axes["norms"]
        ax.bar([str(layer) for layer, _ in norms], [v for _, v in norms], color=AFTER)
        ax.set_title("size of the update per edited layer", fontsize=9)
        ax.set_xlabel("edited layer")
        ax.set_ylabel("‖ΔW‖ (Frobenius norm)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    details = [f"{metrics[k]} {k}" for k in ("method", "judge") if isinstance(metrics.get(k), str)]
    if isinstance(metrics.get("generic_kl"), int | float):
        details.append(f"generic-text drift {metrics['generic_kl']:.3g} nats/token")
    canaries = (metrics.get("safety") or {}).get("canaries")
    if isinstance(canaries, Mapping) and "kept" in canaries:
        details.append(f"canaries kept {canaries['kept']}/{canaries.get('checked')}")
    fig.suptitle("\n".join([shorten(title or "Edit", 110), ", ".join(details)]).strip(), fontsize=10)
    return fig


def plot_edit(metrics: Mapping[str, Any], fmt: Format = "png", *, title: str | None = None) -> bytes:
    """An edit's ``metrics`` as grouped before/after bars per query set, and ‖ΔW‖ per layer when present."""
    return render(draw(lambda m: _edit_figure(m, title), metrics, "edit's metrics"), fmt)
