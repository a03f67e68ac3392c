"""Edit methods side by side on a dev set, each edit alone and all stacked: JSON and a markdown table.

Usage: python benchmarks/edit_quality.py DATA.jsonl [--methods creme,local,auto] [--limit-failing N]
       [--judge published] [--out benchmarks/results/edit_quality.json]

For every method: failing cases found, fixed alone, fixed when stacked (of those fixed alone, still
fixed with every edit active), canary facts kept (alone: mean per edit; stacked: after all edits),
paraphrase and generalization greedy accuracy and win rate before → after, specificity, leakage of
the edited answer, generic-text KL (nats/token) and median edit seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from service.cases import load_cases
from service.cli import load_from_settings
from service.dataset_eval import evaluate_dataset
from service.engine.compositionality import check_cases
from service.engine.judging import DEFAULT_RULE, JUDGE_RULES
from service.engine.methods import method_spec
from service.engine.options import METHODS
from service.settings import get_settings


def _pct(metrics: dict, pre: str, post: str) -> str:
    a, b = metrics.get(pre), metrics.get(post)
    return "-" if a is None or b is None else f"{a:.0%}→{b:.0%}"


def _row(method: str, alone: dict, stacked: dict | None) -> dict:
    s = alone["summary"]
    fixed_alone = {c["id"] for c in alone["cases"] if c["fixed"]}
    row = {
        "method": method,
        "failing": s["n_failing"],
        "fixed_alone": len(fixed_alone),
        "canaries": s["canaries"],
        "canaries_kept_alone_mean": s["canaries_kept_mean"],
        "all_canaries_kept_alone": s["all_canaries_kept"],
        "generic_kl_alone": s["generic_kl_mean"],
        "edit_seconds_median": s["edit_seconds_median"],
        "paraphrase": s["paraphrase"],
        "generalization": s["generalization"],
        "specificity": s["specificity"],
    }
    if stacked is not None:
        readings = stacked["summary"]["stack"]
        final = readings[-1]
        row["stack"] = readings
        row["stacked_n"] = final["n_edits"]
        row["still_fixed_of_alone_fixed"] = len(fixed_alone & set(final["holding_ids"]))
        row["alone_fixed_in_stack"] = len(fixed_alone & {c["id"] for c in stacked["cases"]})
        row["canaries_kept_stacked"] = final["canaries_kept"]
        row["generic_kl_stacked"] = final["generic_kl"]
    return row


def markdown(rows: list[dict]) -> str:
    head = (
        "| method | failing | fixed alone | still fixed stacked | canaries kept alone (all / mean) | "
        "canaries kept stacked | paraphrase greedy | paraphrase win | generalization greedy | "
        "specificity greedy | leakage rel. Δ | generic KL alone / stacked | edit s |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        stacked = (
            f"{r['still_fixed_of_alone_fixed']}/{r['alone_fixed_in_stack']} of {r['stacked_n']}"
            if "stack" in r
            else "-"
        )
        kept_stacked = f"{r['canaries_kept_stacked']}/{r['canaries']}" if "stack" in r else "-"
        kl_stacked = f"{r['generic_kl_stacked']:.4f}" if "stack" in r else "-"
        leak = r["specificity"].get("leakage_mean_rel_change")
        lines.append(
            f"| {r['method']} | {r['failing']} | {r['fixed_alone']}/{r['failing']} | {stacked} | "
            f"{r['all_canaries_kept_alone']}/{r['failing']} / {r['canaries_kept_alone_mean']:.1f} of {r['canaries']} | "
            f"{kept_stacked} | {_pct(r['paraphrase'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{_pct(r['paraphrase'], 'win_rate_pre', 'win_rate_post')} | "
            f"{_pct(r['generalization'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{_pct(r['specificity'], 'greedy_acc_pre', 'greedy_acc_post')} | "
            f"{'-' if leak is None else f'{leak:+.2f}'} | {r['generic_kl_alone']:.4f} / {kl_stacked} | "
            f"{r['edit_seconds_median']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--methods", default="creme,local,auto", help="comma-separated, of: " + ", ".join(METHODS))
    parser.add_argument("--limit-failing", type=int, default=None, help="use only the first N failing cases")
    parser.add_argument("--stack-size", type=int, default=20, help="failing cases stacked (0: no stacked run)")
    parser.add_argument("--judge", choices=JUDGE_RULES, default=DEFAULT_RULE)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edit_quality.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = get_settings()
    lm = load_from_settings(settings)
    cases = load_cases(args.data)
    started = time.perf_counter()
    gap = check_cases(lm, cases, screen_hop1=True, rule=args.judge)
    failing = [c for c in cases if c.id in set(gap.failing_ids)][: args.limit_failing]
    print(f"{len(gap.failing_ids)} failing cases of {len(cases)} ({args.judge} rule); using {len(failing)}")
    rows = []
    for method in args.methods.split(","):
        spec = method_spec(method.strip())
        common = {"spec": spec, "rule": args.judge, "cache_dir": settings.cache_dir, "gap": gap}
        alone = evaluate_dataset(lm, failing, **common)
        print(f"{method}: alone done ({time.perf_counter() - started:.0f} s)", flush=True)
        stacked = None
        if args.stack_size:
            stacked = evaluate_dataset(lm, failing[: args.stack_size], stack=True, **common)
            print(f"{method}: stacked done ({time.perf_counter() - started:.0f} s)", flush=True)
        rows.append(_row(method, alone, stacked))
    table = markdown(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"model": lm.name, "judge": args.judge, "n_cases": len(cases), "failing_total": len(gap.failing_ids)}
    args.out.write_text(json.dumps({**report, "rows": rows, "markdown": table}, indent=2), encoding="utf-8")
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
