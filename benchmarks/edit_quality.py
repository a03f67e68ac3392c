"""Edit methods side by side on a dev set, each edit alone and all stacked: JSON, a markdown table, a plot.

Usage: python benchmarks/edit_quality.py DATA.jsonl [--methods creme,auto] [--stack-methods auto]
       [--no-if-safe-stack] [--limit-failing N] [--probe-cases N] [--judge published]
       [--out benchmarks/results/edit_quality.json]

A method may carry overrides of its parameters: ``local:strength=100,protect_weight=10``.
Alone, for every method: failing cases found, fixed alone, canary facts kept per edit, paraphrase
and generalization greedy accuracy and win rate before → after, specificity, leakage of the edited
answer, generic-text KL (nats/token) and median edit seconds. Stacked (every failing case edited
one after another, each computed with the earlier ones applied): of the cases each method fixed
alone, how many still hold after 20 and after all edits, canaries kept and drift; the default
method is also stacked under ``if_safe``, only the edits that pass the safety check applied, as the
service does (``--no-if-safe-stack`` skips it). ``--plot`` (default: next to the JSON) draws fix
rate against canaries kept and leakage per method, and when stacked the canaries kept and the
alone-fixed cases still fixed against the number of cases edited. Results are written after every
phase (alone, each stacked run, query sets), so a long run can be read while it goes.
"""

from __future__ import annotations

import os

# Before torch loads: waiting OpenMP threads sleep instead of spinning, so runs side by side on
# shared cores do not starve each other (`creme` and the Makefile set the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

from cli.main import load_from_settings
from service.dataset_eval import evaluate_dataset
from service.engine.cases import TwoHopCase, load_cases
from service.engine.compositionality import GapReport, check_cases
from service.engine.judging import DEFAULT_RULE, JUDGE_RULES
from service.engine.loading import LoadedModel
from service.engine.methods import MethodSpec, method_spec
from service.engine.options import DEFAULT_METHOD
from service.settings import get_settings


def parse_variant(text: str, model: str) -> tuple[str, MethodSpec]:
    """``name`` or ``name:key=value,...`` (``templates=english`` among them) → (label, spec) on ``model``."""
    name, _, overrides = text.strip().partition(":")
    values = dict(item.split("=") for item in overrides.split(",") if item)
    templates = values.pop("templates", None)
    numbers = {k.strip(): float(v) for k, v in values.items()}
    return text.strip(), method_spec(name, templates, model=model, **numbers)


def _pct(metrics: dict, pre: str, post: str) -> str:
    a, b = metrics.get(pre), metrics.get(post)
    return "-" if a is None or b is None else f"{a:.0%}→{b:.0%}"


def _alone_row(label: str, report: dict) -> dict:
    s = report["summary"]
    return {
        "method": label,
        "failing": s["n_failing"],
        "fixed_alone": s["fixed"],
        "fixed_alone_ids": [c["id"] for c in report["cases"] if c["fixed"]],
        "canaries": s["canaries"],
        "canaries_kept_alone_mean": s["canaries_kept_mean"],
        "all_canaries_kept_alone": s["all_canaries_kept"],
        "generic_kl_alone": s["generic_kl_mean"],
        "edit_seconds_median": s["edit_seconds_median"],
        "paraphrase": s.get("paraphrase", {}),
        "generalization": s.get("generalization", {}),
        "specificity": s.get("specificity", {}),
    }


def _stack_row(label: str, policy: str, report: dict, fixed_alone: set[str], order: list[str]) -> dict:
    readings = report["summary"]["stack"]

    def holding(reading: dict) -> dict:
        attempted = set(order[: reading["n_cases"]])
        return {
            "n_cases": reading["n_cases"],
            "n_applied": reading["n_edits"],
            "alone_fixed": len(fixed_alone & attempted),
            "still_fixed": len(fixed_alone & set(reading["holding_ids"])),
            "applied_holding": reading["holding"],
            "canaries_kept": reading["canaries_kept"],
            "canaries": reading["canaries"],
            "generic_kl": reading["generic_kl"],
        }

    return {"method": label, "policy": policy, "readings": [holding(r) for r in readings]}


def markdown(alone: list[dict], stacked: list[dict]) -> str:
    head = (
        "| method | fixed alone | canaries kept alone (edits keeping all; mean) | paraphrase greedy | "
        "paraphrase win | generalization greedy | specificity greedy | leakage rel. Δ | generic KL | edit s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in alone:
        leak = r["specificity"].get("leakage_mean_rel_change")
        lines.append(
            f"| {r['method']} | {r['fixed_alone']}/{r['failing']} | "
            f"{r['all_canaries_kept_alone']}/{r['failing']}; {r['canaries_kept_alone_mean']:.1f} of {r['canaries']} | "
            f"{_pct(r['paraphrase'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{_pct(r['paraphrase'], 'win_rate_pre', 'win_rate_post')} | "
            f"{_pct(r['generalization'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{_pct(r['specificity'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{'-' if leak is None else f'{leak:+.2f}'} | {r['generic_kl_alone']:.4f} | "
            f"{r['edit_seconds_median']:.2f} |"
        )
    head = (
        "| method, stacked | cases edited | edits applied | of those fixed alone, still fixed | "
        "applied edits holding | canaries kept | generic KL |"
    )
    lines += ["", head, "|" + "---|" * (head.count("|") - 1)]
    for s in stacked:
        for r in s["readings"]:
            lines.append(
                f"| {s['method']} ({s['policy']}) | {r['n_cases']} | {r['n_applied']} | "
                f"{r['still_fixed']}/{r['alone_fixed']} | {r['applied_holding']}/{r['n_applied']} | "
                f"{r['canaries_kept']}/{r['canaries']} | {r['generic_kl']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def plot(alone: list[dict], stacked: list[dict], path: Path) -> None:
    """Fix rate against canaries kept and leakage (alone); canaries kept and edits still fixed when stacked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for i, r in enumerate(alone):
        fix = 100 * r["fixed_alone"] / max(r["failing"], 1)
        kept = 100 * r["canaries_kept_alone_mean"] / max(r["canaries"], 1)
        leak = r["specificity"].get("leakage_mean_rel_change")  # None: query sets not read
        offset = (6, 4 - 11 * (i % 3))  # labels of points that coincide stay apart
        for ax, x in ((axes[0], kept), (axes[1], leak)):
            if x is not None:
                ax.scatter(x, fix, s=60, color=f"C{i}")
                ax.annotate(r["method"], (x, fix), textcoords="offset points", xytext=offset, fontsize=8)
    axes[0].set(xlabel="canary facts kept per edit (mean, %)", ylabel="failing cases fixed alone (%)")
    axes[0].set_title("fix rate vs canaries kept (one edit)")
    axes[1].set(xlabel="leakage of the edited answer (mean relative change of p)", ylabel="fixed alone (%)")
    axes[1].set_title("fix rate vs leakage (one edit)")
    if all(r["specificity"].get("leakage_mean_rel_change") is None for r in alone):
        axes[1].text(0.5, 0.5, "query sets not read in this run", ha="center", va="center", transform=axes[1].transAxes)
    for i, s in enumerate(stacked):
        xs = [r["n_cases"] for r in s["readings"]]
        kept = [100 * r["canaries_kept"] / max(r["canaries"], 1) for r in s["readings"]]
        held = [100 * r["still_fixed"] / max(r["alone_fixed"], 1) for r in s["readings"]]
        name = f"{s['method']} ({s['policy']})"
        axes[2].plot(xs, kept, marker="o", color=f"C{i}", label=f"{name}: canaries kept")
        axes[2].plot(xs, held, marker="s", linestyle="--", color=f"C{i}", label=f"{name}: alone-fixed still fixed")
    axes[2].set(xlabel="failing cases edited one after another", ylabel="%", ylim=(-5, 105))
    axes[2].set_title("stacking")
    if stacked:
        axes[2].legend(fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "no stacked run", ha="center", va="center", transform=axes[2].transAxes)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _failing(lm: LoadedModel, cases: list[TwoHopCase], rule: str, limit: int | None) -> tuple[GapReport, list]:
    gap = check_cases(lm, cases, screen_hop1=True, rule=rule)
    failing = [c for c in cases if c.id in set(gap.failing_ids)][:limit]
    print(f"{len(gap.failing_ids)} failing cases of {len(cases)} ({rule} rule); using {len(failing)}", flush=True)
    return gap, failing


def _write(args: argparse.Namespace, header: dict, alone: list[dict], stacked: list[dict]) -> str:
    """Write the JSON, the markdown table and the plot of what is measured so far; return the table."""
    table = markdown(alone, stacked)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**header, "alone": alone, "stacked": stacked}, indent=2), encoding="utf-8")
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    plot(alone, stacked, args.plot or args.out.with_suffix(".png"))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--methods", default="creme,auto", help="methods evaluated alone")
    parser.add_argument("--stack-methods", default="auto", help="methods stacked under 'always' ('' for none)")
    parser.add_argument(
        "--if-safe-stack", action=argparse.BooleanOptionalAction, default=True,
        help="also stack the default method under 'if_safe', as the service applies edits",
    )  # fmt: skip
    parser.add_argument("--limit-failing", type=int, default=None, help="use only the first N failing cases")
    parser.add_argument("--probe-cases", type=int, default=None, help="query sets read on the first N (default all)")
    parser.add_argument("--judge", choices=JUDGE_RULES, default=DEFAULT_RULE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edit_quality.json"))
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = get_settings()
    lm = load_from_settings(settings)
    started = time.perf_counter()
    gap, failing = _failing(lm, load_cases(args.data), args.judge, args.limit_failing)
    common = {"rule": args.judge, "cache_dir": settings.cache_dir, "gap": gap}
    header = {"model": lm.name, "judge": args.judge, "n_cases": gap.n, "failing_total": len(gap.failing_ids)}
    header["failing_used"] = len(failing)
    order = [c.id for c in failing]
    variants = [parse_variant(v, lm.name) for v in filter(None, args.methods.split(","))]
    alone: list[dict] = []
    for label, spec in variants:  # cheap first: fix rate, canaries and drift of every edit alone
        alone.append(_alone_row(label, evaluate_dataset(lm, failing, spec=spec, probes=False, **common)))
        print(f"{label}: alone done ({time.perf_counter() - started:.0f} s)", flush=True)
        _write(args, header, alone, [])
    fixed_by = {r["method"]: set(r["fixed_alone_ids"]) for r in alone}
    runs = [(v, "always") for v in filter(None, args.stack_methods.split(","))]
    if args.if_safe_stack:
        runs.append((DEFAULT_METHOD, "if_safe"))
    stacked: list[dict] = []
    for variant, policy in runs:
        label, spec = parse_variant(variant, lm.name)
        report = evaluate_dataset(lm, failing, spec=spec, stack=True, stack_policy=policy, probes=False, **common)
        alone_fixed = fixed_by.get(label) or {c["id"] for c in report["cases"] if c["fixed"]}
        stacked.append(_stack_row(label, policy, report, alone_fixed, order))
        print(f"{label} ({policy}): stacked done ({time.perf_counter() - started:.0f} s)", flush=True)
        _write(args, header, alone, stacked)
    probed = failing[: args.probe_cases]
    for row, (label, spec) in zip(alone, variants, strict=True):  # the query sets: the slow part
        summary = evaluate_dataset(lm, probed, spec=spec, **common)["summary"]
        row.update({name: summary[name] for name in ("paraphrase", "generalization", "specificity")})
        row["probe_cases"] = len(probed)
        print(f"{label}: query sets done ({time.perf_counter() - started:.0f} s)", flush=True)
        _write(args, header, alone, stacked)
    header["seconds"] = time.perf_counter() - started
    print(_write(args, header, alone, stacked))
    print(f"wrote {args.out}, {args.out.with_suffix('.md')} and {args.plot or args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
