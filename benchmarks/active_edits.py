"""Time apply and revert against the number of active edits on the embedded model.

For 1, 10, 100 and 1,000 active edits on the default band, each a random rank-one delta per layer
scaled like a real edit (the norms of ``u`` and ``r`` of one CREME edit computed here first, or a
fixed ``--delta-norm``), time: ``set_active`` of all of them from the pristine model, ``apply`` of
one more edit, ``revert`` of the oldest and of a middle edit (each re-applied after timing), and the
state checksum a worker takes after every change. Medians over ``--repeats``. Every count ends with
the state compared bit for bit with a from-scratch rebuild, and the run with everything reverted
compared with the pristine weights.

Usage: python benchmarks/active_edits.py [--counts 1,10,100,1000] [--repeats 5] [--layers 10-20]
                                         [--delta-norm 3.0] [--threads N]
                                         [--out benchmarks/results/active_edits.json]
"""

from __future__ import annotations

import os

# Before torch loads: waiting OpenMP threads sleep instead of spinning, so runs side by side on
# shared cores do not starve each other (`creme` and the Makefile set the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from edit_latency import environment, timed
from large_model import QUERY, peak_rss_bytes

from cli.main import load_from_settings, parse_layers
from service.engine.creme import compute_edit, default_layers
from service.engine.delta import EditDelta, LayerFactors
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from service.settings import get_settings

Norms = dict[int, tuple[float, float]]  # layer -> (||u||, ||r||) of a rank-one factor


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def real_norms(lm: LoadedModel, layers: Sequence[int]) -> Norms:
    """||u|| and ||r|| per layer of one CREME edit (fast schedule) computed on ``lm``."""
    delta = compute_edit(lm, QUERY, layers).delta
    return {f.layer: (float(f.u.norm()), float(f.r.norm())) for f in delta.factors}


def random_delta(lm: LoadedModel, norms: Norms, seed: int) -> EditDelta:
    """A rank-one delta per layer in random directions, with the factor norms of ``norms``."""
    g = torch.Generator().manual_seed(seed)
    factors = []
    for layer, (u_norm, r_norm) in sorted(norms.items()):
        weight = lm.adapter.out_proj_module(lm.model, layer).weight
        d_out, d_in = (weight.shape[1], weight.shape[0]) if lm.adapter.weight_in_out else weight.shape
        u, r = torch.randn(d_in, 1, generator=g), torch.randn(d_out, 1, generator=g)
        factors.append(LayerFactors(layer, u * (u_norm / u.norm()), r * (r_norm / r.norm())))
    return EditDelta(tuple(factors), lm.fingerprint, lm.adapter.name, params={"benchmark": seed})


def samples(lm: LoadedModel, repeats: int, fn: Callable[[], object], undo: Callable[[], object]) -> list[float]:
    """Seconds of ``fn`` over ``repeats`` runs, ``undo`` (untimed) after each."""
    seconds = []
    for _ in range(repeats):
        seconds.append(timed(lm.device, fn)[1])
        undo()
    return seconds


def revert_samples(lm: LoadedModel, weights: WeightState, position: int, repeats: int) -> list[float]:
    """Seconds to revert the edit at ``position`` of the active order (re-applied, on top, after each)."""
    seconds = []
    for _ in range(repeats):
        edit_id, delta = weights.active[position]
        seconds.append(timed(lm.device, partial(weights.revert, edit_id))[1])
        weights.apply(edit_id, delta)
    return seconds


def measure(lm: LoadedModel, deltas: list[EditDelta], n: int, repeats: int) -> dict[str, Any]:
    """The timings with ``n`` active edits (``deltas[n]`` is the extra edit applied on top)."""
    edits = [(f"e{i}", deltas[i]) for i in range(n)]
    from_scratch = []
    for _ in range(repeats):  # a fresh state each time, as a worker that starts
        fresh = WeightState(lm)
        from_scratch.append(timed(lm.device, partial(fresh.set_active, edits))[1])
        fresh.set_active([])
    weights = WeightState(lm)
    weights.set_active(edits)
    extra = ("extra", deltas[n])
    seconds = {
        "set_active": from_scratch,
        "apply_one": samples(lm, repeats, lambda: weights.apply(*extra), lambda: weights.revert(extra[0])),
        "revert_oldest": revert_samples(lm, weights, 0, repeats),
        "revert_middle": revert_samples(lm, weights, n // 2, repeats),
        "checksum": samples(lm, repeats, weights.checksum, lambda: None),
    }
    row: dict[str, Any] = {"active": n, **{f"{k}_seconds": statistics.median(v) for k, v in seconds.items()}}
    row.update(
        rss_bytes=rss_bytes(),
        pristine_bytes=weights.pristine_bytes,
        factor_bytes=sum(f.u.nbytes + f.r.nbytes for _, d in weights.active for f in d.factors),
        samples=seconds,
    )
    after = weights.checksum()  # the edits now in another order than ``edits``: reverted ones moved on top
    weights.set_active([])
    reference = WeightState(lm)
    reference.set_active(edits)
    row["equals_from_scratch"] = reference.checksum() == after
    reference.set_active([])
    return row


def markdown(report: dict[str, Any]) -> str:
    ms = 1000.0
    norms = report["delta_norms"].values()
    lines = [
        f"{report['model']} on {report['device']} ({report['dtype']}), {report['torch_threads']} torch threads,"
        f" load average {report['load_average'][0]:.1f} on {report['cpu_count']} CPUs; layers"
        f" {report['layers'][0]}-{report['layers'][-1]}, ||ΔW|| per layer {min(norms):.2f}-{max(norms):.2f};"
        f" medians of {report['repeats']}.",
        "",
        "| active edits | set_active (all) | apply one more | revert oldest | revert middle | checksum | RSS |"
        " = from scratch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['active']:,} | {row['set_active_seconds'] * ms:.1f} ms | {row['apply_one_seconds'] * ms:.1f} ms"
            f" | {row['revert_oldest_seconds'] * ms:.1f} ms | {row['revert_middle_seconds'] * ms:.1f} ms"
            f" | {row['checksum_seconds'] * ms:.1f} ms | {row['rss_bytes'] / 2**20:.0f} MiB"
            f" | {'yes' if row['equals_from_scratch'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,100,1000", help="numbers of active edits, comma-separated")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--layers", type=parse_layers, default=None)
    parser.add_argument("--delta-norm", type=float, default=None, help="||ΔW|| per layer (default: a real edit's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/active_edits.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    counts = sorted(int(c) for c in args.counts.split(","))
    lm = load_from_settings(get_settings())
    layers = args.layers or default_layers(lm)
    if args.delta_norm is None:
        print("computing one real edit for the scale of the deltas ...", file=sys.stderr)
        norms = real_norms(lm, layers)
    else:
        norms = {layer: (1.0, args.delta_norm) for layer in layers}
    pristine = WeightState(lm).checksum()
    deltas = [random_delta(lm, norms, seed) for seed in range(max(counts) + 1)]
    rows = []
    for n in counts:
        rows.append(measure(lm, deltas, n, args.repeats))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "samples"}), file=sys.stderr)
    report = {
        **environment(lm),
        "load_average": os.getloadavg(),
        "layers": list(layers),
        "delta_norms": {layer: u * r for layer, (u, r) in norms.items()},
        "repeats": args.repeats,
        "rows": rows,
        "peak_rss_bytes": peak_rss_bytes(),
        "reverted_to_pristine": WeightState(lm).checksum() == pristine,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = markdown(report)
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    peak = report["peak_rss_bytes"] / 2**20
    print(f"peak RSS {peak:.0f} MiB; everything reverted = pristine bit for bit: {report['reverted_to_pristine']}")


if __name__ == "__main__":
    main()
