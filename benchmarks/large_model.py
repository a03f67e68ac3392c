"""Edit a random-weight model of the LLaMA-2-7B shape: one edit on the default band, apply and revert
(checked bit for bit), peak memory and the size of the delta.

The model is built directly in the chosen dtype on the chosen device (no float32 copy), with the
embedded SmolLM2's tokenizer, so its vocabulary is that tokenizer's (49152 rather than LLaMA-2's 32000).

Usage: python benchmarks/large_model.py [--layers 32] [--dtype bfloat16] [--device cpu] [--method creme]
                                        [--repeats 1] [--out benchmarks/results/large_model.json]
"""

from __future__ import annotations

import os

# Before torch loads: waiting OpenMP threads sleep instead of spinning, so runs side by side on
# shared cores do not starve each other (`creme` and the Makefile set the same).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import platform
import resource
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
from edit_latency import timed
from transformers import AutoModelForCausalLM, LlamaConfig

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, default_layers
from service.engine.families import adapter_for
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, load_tokenizer, parameters_fingerprint
from service.engine.methods import compute_with, method_spec
from service.engine.options import METHODS
from service.engine.weights import WeightState
from service.settings import get_settings

LLAMA_2_7B = {  # the published LLaMA-2-7B configuration, but for the depth and the vocabulary
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
}
QUERY = CompositionalQuery(
    "The capital of the country where Mount Fuji is located is", "the country where Mount Fuji is located", "Japan"
)
ANSWER = "Tokyo"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory(device: torch.device) -> dict[str, int]:
    """Peak host memory so far and, on CUDA, the peak memory allocated on the device."""
    out = {"peak_rss_bytes": peak_rss_bytes()}
    if device.type == "cuda":
        out["cuda_max_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    return out


def random_llama(n_layers: int, dtype: torch.dtype, device: str, cache_dir: Path) -> LoadedModel:
    """A LLaMA-2-7B-shaped model ``n_layers`` deep with random weights (seed 0), built in ``dtype`` on ``device``."""
    tokenizer = load_tokenizer(EMBEDDED_MODEL, cache_dir=cache_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), num_hidden_layers=n_layers, **LLAMA_2_7B)
    torch.manual_seed(0)
    with torch.device(device):  # parameters are created where they stay, in ``dtype``
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter_for(model),
        name=f"random-llama-2-7b-shape-{n_layers}",
        fingerprint=parameters_fingerprint(model),
    )


def measure_edit(lm: LoadedModel, method: str, repeats: int) -> dict[str, Any]:
    """Compute the edit of :data:`QUERY` on the default band ``repeats`` times; apply and revert the last one.

    Revert is exact when every attention output weight hashes as before and each edited weight
    equals its copy taken before the apply.
    """
    layers = default_layers(lm)
    ctx = EditContext(lm, WeightState(lm))
    spec = method_spec(method, model=lm.name)
    out: dict[str, Any] = {"method": method, "layers": layers}
    if spec.strength > 0:  # key statistics: measured once per base model, cached on disk in the service
        out["key_statistics_seconds"] = timed(lm.device, lambda: ctx.second_moments(layers))[1]
    seconds = []
    for _ in range(repeats):
        result, elapsed = timed(lm.device, lambda: compute_with(ctx, QUERY, layers, spec, answer=ANSWER))
        seconds.append(elapsed)
    delta = result.delta
    weights = ctx.weights
    edited = {n: lm.adapter.out_proj_module(lm.model, n).weight.detach().clone() for n in delta.layers}
    checksum = weights.checksum()
    out["apply_seconds"] = timed(lm.device, lambda: weights.apply("benchmark", delta))[1]
    changed = weights.checksum() != checksum
    out["pristine_bytes"] = weights.pristine_bytes
    out["revert_seconds"] = timed(lm.device, lambda: weights.revert("benchmark"))[1]
    exact = weights.checksum() == checksum and all(
        torch.equal(lm.adapter.out_proj_module(lm.model, n).weight, w) for n, w in edited.items()
    )
    out.update(
        edit_seconds=seconds,
        median_edit_seconds=statistics.median(seconds),
        apply_changed_weights=changed,
        revert_bit_exact=exact,
        delta_bytes=len(delta.to_bytes()),
        delta_rank=[f.rank for f in delta.factors],
        factors_float32=all(f.u.dtype == f.r.dtype == torch.float32 for f in delta.factors),
        memory=memory(lm.device),
    )
    return out


def describe(lm: LoadedModel, build_seconds: float) -> dict[str, Any]:
    """The model's shape and size, and what building it took."""
    params = list(lm.model.parameters())
    return {
        "model": lm.name,
        "layers": lm.n_layers,
        "hidden_size": lm.model.config.hidden_size,
        "vocab_size": lm.model.config.vocab_size,
        "dtype": str(params[0].dtype),
        "device": str(lm.device),
        "parameters": sum(p.numel() for p in params),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
        "build_seconds": build_seconds,
        "memory_after_build": memory(lm.device),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32, help="depth of the model (32 as LLaMA-2-7B)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--method", choices=METHODS, default="creme", help="edit method (auto judges on the query)")
    parser.add_argument("--repeats", type=int, default=1, help="edits computed (the first includes warm-up)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/large_model.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    device = torch.device(args.device)
    lm, build_seconds = timed(
        device, lambda: random_llama(args.layers, DTYPES[args.dtype], args.device, get_settings().cache_dir)
    )
    report = {
        **describe(lm, build_seconds),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "edit": measure_edit(lm, args.method, args.repeats),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    edit, gib = report["edit"], 2**30
    print(
        f"{report['model']}: {report['parameters'] / 1e9:.2f}B parameters, {report['parameter_bytes'] / gib:.2f} GiB "
        f"{report['dtype']} on {report['device']}, built in {build_seconds:.1f} s\n"
        f"edit ({edit['method']}, layers {edit['layers'][0]}-{edit['layers'][-1]}): "
        f"median {edit['median_edit_seconds']:.2f} s; apply {edit['apply_seconds']:.3f} s, "
        f"revert {edit['revert_seconds']:.3f} s, bit-exact: {edit['revert_bit_exact']}\n"
        f"delta {edit['delta_bytes'] / 2**20:.2f} MiB; pristine copies {edit['pristine_bytes'] / 2**20:.0f} MiB; "
        f"peak RSS {edit['memory']['peak_rss_bytes'] / gib:.2f} GiB\nwrote {args.out}"
    )
    return 0 if edit["revert_bit_exact"] and edit["apply_changed_weights"] else 1


if __name__ == "__main__":
    sys.exit(main())
