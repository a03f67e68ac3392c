"""Time edits on the embedded model: the default method (as the service computes it, with its
key statistics cached and, on the default band, the wider bands to fall back to), and the
published method on the fast and the reference schedules. Per-edit seconds are kept, so the
edits the default band fixes can be told from those that fall back to a wider band.

``--data DATA.jsonl`` also times the default method once on every case of that dev set the model
fails compositionally (published rule; ``--limit-failing N`` for the first N): the median a user
posting the set's failing queries would see, with the band each edit ended on and whether it fixed
its query.

Usage: python benchmarks/edit_latency.py [--repeats 5] [--layers 10-20] [--data DATA.jsonl [--limit-failing N]]
       [--out benchmarks/results/edit_latency.json]
"""

from __future__ import annotations

import os

# Before torch loads: waiting OpenMP threads sleep instead of spinning, so runs side by side on
# shared cores do not starve each other (`creme` and the Makefile set the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from cli.main import load_from_settings, parse_layers
from service.engine.cases import load_cases
from service.engine.compositionality import check_cases
from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, compute_edit, default_layers, fallback_bands
from service.engine.judging import DEFAULT_RULE
from service.engine.loading import LoadedModel
from service.engine.methods import compute_with, method_spec
from service.engine.options import DEFAULT_METHOD
from service.engine.safety import Canary, answered
from service.engine.weights import WeightState
from service.settings import get_settings

CASES = Path(__file__).resolve().parents[1] / "tests" / "data" / "mquake_sample.jsonl"
FAILING = ("mquake-2hop-0072", "mquake-2hop-0085", "mquake-2hop-0158", "mquake-2hop-0295", "mquake-2hop-0394")
T = TypeVar("T")


def environment(lm: LoadedModel) -> dict[str, Any]:
    """What a timing depends on: the model, its device and dtype, the threads and the machine."""
    return {
        "model": lm.name,
        "device": str(lm.device),
        "dtype": str(next(lm.model.parameters()).dtype),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def timed(device: torch.device, fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall-clock seconds, the device's queued work waited for on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - started


def time_edits(lm: LoadedModel, layers: Sequence[int], repeats: int, cache_dir: Path | None) -> dict[str, Any]:
    """Seconds per edit of the failing sample cases by the default method and by both CREME schedules."""
    cases = [c for c in load_cases(CASES) if c.id in FAILING]
    queries = [(CompositionalQuery(c.compositional, c.hop1_phrase, c.bridge), c.answer) for c in cases]
    ctx = EditContext(lm, WeightState(lm), cache_dir)
    default = method_spec(DEFAULT_METHOD, model=lm.name)
    wider = fallback_bands(lm) if list(layers) == default_layers(lm) else []  # as the worker does
    runs = {
        f"default ({DEFAULT_METHOD})": lambda q, a: compute_with(ctx, q, layers, default, answer=a, wider_bands=wider),
        "creme fast": lambda q, a: compute_edit(lm, q, layers, schedule="fast"),
        "creme reference": lambda q, a: compute_edit(lm, q, layers, schedule="reference"),
    }
    runs[f"default ({DEFAULT_METHOD})"](*queries[0])  # warm-up: key statistics computed or loaded once
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        for name, run in runs.items():  # interleaved, so load changes hit all alike
            query, answer = queries[i % len(queries)]
            seconds[name].append(timed(lm.device, partial(run, query, answer))[1])
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        **environment(lm),
        "layers": list(layers),
        "wider_bands": wider,
        "cases": [cases[i % len(cases)].id for i in range(repeats)],
        "templates": 22,
        "repeats": repeats,
        "seconds": seconds,
        "median_seconds": medians,
        "speedup_fast_over_reference": medians["creme reference"] / medians["creme fast"],
    }


def time_dev_set(lm: LoadedModel, data: Path, limit: int | None, cache_dir: Path | None) -> dict[str, Any]:
    """Seconds of the default method, as the worker computes it, on each failing case of ``data``."""
    cases = load_cases(data)
    gap = check_cases(lm, cases, screen_hop1=True, rule=DEFAULT_RULE)
    failing = [c for c in cases if c.id in set(gap.failing_ids)][:limit]
    ctx = EditContext(lm, WeightState(lm), cache_dir)
    layers, wider, spec = default_layers(lm), fallback_bands(lm), method_spec(DEFAULT_METHOD, model=lm.name)
    rows = []
    for case in failing:
        query = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
        result, seconds = timed(
            lm.device,
            partial(compute_with, ctx, query, layers, spec, answer=case.answer,
                    answer_aliases=case.answer_aliases, wider_bands=wider),
        )  # fmt: skip
        with ctx.weights.trial("timed", result.delta):
            fixed = answered(lm, [Canary(case.compositional, case.answer, case.answer_aliases)])[0]
        rows.append({"id": case.id, "seconds": seconds, "layers": result.delta.layers, "fixed": fixed})
    on_default = [r["seconds"] for r in rows if r["layers"] == layers]
    return {
        "data": str(data),
        "failing": len(failing),
        "median_seconds": statistics.median(r["seconds"] for r in rows),
        "median_seconds_default_band": statistics.median(on_default) if on_default else None,
        "fixed": sum(r["fixed"] for r in rows),
        "cases": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5, help="edits per schedule (cases cycle)")
    parser.add_argument("--layers", type=parse_layers, default=None)
    parser.add_argument("--data", type=Path, default=None, help="also time the default method on its failing cases")
    parser.add_argument("--limit-failing", type=int, default=None, help="with --data: only the first N failing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edit_latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = get_settings()
    lm = load_from_settings(settings)
    report = time_edits(lm, args.layers or default_layers(lm), args.repeats, settings.cache_dir)
    shown = {k: report[k] for k in ("layers", "median_seconds", "speedup_fast_over_reference")}
    if args.data is not None:
        report["dev_set"] = time_dev_set(lm, args.data, args.limit_failing, settings.cache_dir)
        shown["dev_set"] = {k: v for k, v in report["dev_set"].items() if k != "cases"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(shown, indent=2))


if __name__ == "__main__":
    main()
