"""Check the engine on one NVIDIA GPU and write what it found to benchmarks/results/gpu_check.json.

With CUDA (``--device auto`` finds it, or ``--device cuda``):
1. ``tests/engine/test_half_precision.py`` with ``CREME_TEST_DEVICE=cuda`` (float16, bfloat16, float32);
2. edit latency of the embedded model in each of ``--dtypes`` (``edit_latency.time_edits``), and
   apply + revert of its default-method edit compared bit for bit over the whole state dict;
3. the LLaMA-2-7B-shaped random model (``large_model``): build, the published and the default
   method on the default band, apply and revert checked bit for bit, peak device memory.

Without CUDA it says "no CUDA device", runs step 1 on the CPU and exits 0 (1 with ``--require-cuda``);
``--device cpu`` runs every step on the CPU (slow; to try the script itself). The exit status is 1
when any step fails. The JSON is rewritten after each step, so a run cut short keeps what it did.

Usage: python benchmarks/gpu_check.py [--require-cuda] [--device auto|cuda|cpu] [--dtypes float16,bfloat16]
                                      [--repeats 3] [--large-layers 32] [--large-dtype bfloat16]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from edit_latency import time_edits, timed
from large_model import ANSWER, DTYPES, QUERY, describe, measure_edit, memory, random_llama

from service.engine.context import EditContext
from service.engine.creme import default_layers
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, load_model
from service.engine.methods import compute_with, method_spec
from service.engine.options import DEFAULT_METHOD
from service.engine.weights import WeightState
from service.settings import get_settings

ROOT = Path(__file__).resolve().parents[1]
HALF_PRECISION_TESTS = "tests/engine/test_half_precision.py"
TEST_TIMEOUT_S = 900


def environment() -> dict[str, Any]:
    """torch, CUDA and the GPU as this process sees them."""
    out: dict[str, Any] = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update(
            cuda=torch.version.cuda,
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            total_memory_bytes=props.total_memory,
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return out


def half_precision_tests(device: str) -> dict[str, Any]:
    """Run the half-precision engine tests in a child pytest with ``CREME_TEST_DEVICE=device``."""
    env = {**os.environ, "CREME_TEST_DEVICE": device, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", HALF_PRECISION_TESTS]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    lines = done.stdout.strip().splitlines()
    return {
        "device": device,
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "output_tail": "\n".join(lines[-40:]) + done.stderr[-2000:],
    }


def exact_revert(lm: LoadedModel, method: str) -> dict[str, Any]:
    """Apply and revert ``method``'s edit of the benchmark query; every tensor of the state dict is compared."""
    before = {name: t.detach().clone() for name, t in lm.model.state_dict().items()}
    ctx = EditContext(lm, WeightState(lm), get_settings().cache_dir)
    delta = compute_with(ctx, QUERY, default_layers(lm), method_spec(method, model=lm.name), answer=ANSWER).delta
    ctx.weights.apply("gpu-check", delta)
    changed = any(not torch.equal(t, before[name]) for name, t in lm.model.state_dict().items())
    ctx.weights.revert("gpu-check")
    exact = all(torch.equal(t, before[name]) for name, t in lm.model.state_dict().items())
    return {"method": method, "apply_changed_weights": changed, "revert_bit_exact": exact}


def embedded(dtype: str, device: str, repeats: int) -> dict[str, Any]:
    """Edit latency and exact revert of the embedded model in ``dtype`` on ``device``."""
    settings = get_settings()
    lm = load_model(EMBEDDED_MODEL, cache_dir=settings.cache_dir, dtype=dtype, device=device)
    latency = time_edits(lm, default_layers(lm), repeats, settings.cache_dir)
    revert = exact_revert(lm, DEFAULT_METHOD)
    return {
        "ok": revert["apply_changed_weights"] and revert["revert_bit_exact"],
        "latency": latency,
        "revert": revert,
        "memory": memory(lm.device),
    }


def large(n_layers: int, dtype: str, device: str, repeats: int) -> dict[str, Any]:
    """The LLaMA-2-7B-shaped model: the published and the default method, each applied and reverted."""
    lm, build_seconds = timed(
        torch.device(device), lambda: random_llama(n_layers, DTYPES[dtype], device, get_settings().cache_dir)
    )
    out = describe(lm, build_seconds)
    out["edits"] = [measure_edit(lm, method, repeats) for method in dict.fromkeys(("creme", DEFAULT_METHOD))]
    out["ok"] = all(e["apply_changed_weights"] and e["revert_bit_exact"] for e in out["edits"])
    return out


def _step(report: dict[str, Any], out: Path, name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one step, record its result or its error under ``name``, and rewrite the JSON."""
    print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        report["steps"][name] = run()
    except Exception as exc:  # one failed step must not lose the others' results
        report["steps"][name] = {"ok": False, "error": repr(exc), "traceback": traceback.format_exc()[-4000:]}
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    print(f"[gpu_check] {name}: {'ok' if report['steps'][name]['ok'] else 'FAILED'}", file=sys.stderr, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--require-cuda", action="store_true", help="exit 1 when there is no CUDA device")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--dtypes", default="float16,bfloat16", help="dtypes of the embedded-model runs")
    parser.add_argument("--repeats", type=int, default=3, help="edits timed per method and schedule")
    parser.add_argument("--large-layers", type=int, default=32, help="depth of the LLaMA-2-7B-shaped model")
    parser.add_argument("--large-dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda: no CUDA device")
    device = ("cuda" if cuda else None) if args.device == "auto" else args.device  # None: no CUDA device
    report: dict[str, Any] = {"environment": environment(), "device": device or "cpu", "steps": {}}
    if device is None:
        report["note"] = "no CUDA device: ran the half-precision tests on the CPU only"
        print(f"[gpu_check] {report['note']}", file=sys.stderr)
    test_device = device or "cpu"
    _step(report, args.out, f"half_precision_tests_{test_device}", lambda: half_precision_tests(test_device))
    if device is not None:
        for dtype in args.dtypes.split(","):
            _step(report, args.out, f"embedded_{dtype}", lambda d=dtype: embedded(d, device, args.repeats))
        name = f"large_{args.large_layers}_layers_{args.large_dtype}"
        _step(report, args.out, name, lambda: large(args.large_layers, args.large_dtype, device, args.repeats))
    print(json.dumps({name: step["ok"] for name, step in report["steps"].items()}, indent=2))
    print(f"[gpu_check] wrote {args.out}", file=sys.stderr)
    if not cuda:
        print("[gpu_check] no CUDA device", file=sys.stderr)
        if args.require_cuda:
            return 1
    return 0 if all(step["ok"] for step in report["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
