"""Edits that leave the service: a delta as a PEFT LoRA adapter, and a model with edits merged in.

A CREME delta is already a LoRA update: at each edited layer ΔW = r uᵀ ([d_out, d_in], rank k), so
``lora_A`` = uᵀ [k, d_in] and ``lora_B`` = r [d_out, k], with ``lora_alpha`` = k so that peft's
scaling (alpha / r) is exactly 1. GPT-2's Conv1D stores its weight [in, out]; peft keeps the same
A/B layout for it and is told so by ``fan_in_fan_out``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_safetensors

from service.engine.delta import EditDelta
from service.engine.families import FAMILIES, FamilyAdapter, UnsupportedModelError
from service.engine.loading import LoadedModel

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGED_RECORD = "creme_merged.json"
PEFT_PREFIX = "base_model.model."  # what peft puts before a module's name in a saved adapter


def family_named(name: str) -> FamilyAdapter:
    """The family adapter called ``name`` (as a delta records it)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    known = ", ".join(f.name for f in FAMILIES)
    raise UnsupportedModelError(f"unknown model family {name!r}; known: {known}")


def module_name(adapter: FamilyAdapter, layer: int) -> str:
    """The edited projection of ``layer``, named from the ``*ForCausalLM`` (``model.layers.3.self_attn.o_proj``)."""
    return f"{adapter.blocks}.{layer}.{adapter.out_proj}"


def peft_target(adapter: FamilyAdapter) -> str:
    """How ``target_modules`` names the edited projection: its own name (``o_proj``), or with its parent
    where the MLP has a module of that name too (GPT-2's ``attn.c_proj``: peft matches names by suffix)."""
    leaf = adapter.out_proj.rsplit(".", 1)[-1]
    return adapter.out_proj if leaf in _MLP_LEAVES.get(adapter.name, ()) else leaf


_MLP_LEAVES = {"gpt2": ("c_fc", "c_proj")}  # module names inside a family's MLP that a suffix could confuse


def peft_config(delta: EditDelta, base_model: str) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``delta``: LoRA on the edited layers' output projections, scaling 1.

    ``r`` is the largest layer rank (what vLLM checks against ``--max-lora-rank``); layers of another
    rank are listed in ``rank_pattern``, with the same value in ``alpha_pattern``.
    """
    adapter = family_named(delta.family)
    ranks = {f.layer: f.rank for f in delta.factors}
    rank = max(ranks.values())
    pattern = {module_name(adapter, layer): k for layer, k in ranks.items() if k != rank}
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "revision": None,
        "inference_mode": True,
        "r": rank,
        "lora_alpha": rank,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),
        "target_modules": [peft_target(adapter)],
        "layers_to_transform": delta.layers,
        "layers_pattern": adapter.blocks.rsplit(".", 1)[-1],
        "fan_in_fan_out": adapter.weight_in_out,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
    }


def peft_tensors(delta: EditDelta) -> dict[str, torch.Tensor]:
    """``lora_A`` = uᵀ [k, d_in] and ``lora_B`` = r [d_out, k] of each layer, named as peft saves them."""
    adapter = family_named(delta.family)
    tensors: dict[str, torch.Tensor] = {}
    for f in delta.factors:
        name = PEFT_PREFIX + module_name(adapter, f.layer)
        tensors[f"{name}.lora_A.weight"] = f.u.T.contiguous().to(torch.float32)
        tensors[f"{name}.lora_B.weight"] = f.r.contiguous().to(torch.float32)
    return tensors


def peft_adapter(delta: EditDelta, base_model: str) -> dict[str, bytes]:
    """The two files of a PEFT LoRA adapter directory, by name: its config and its safetensors weights."""
    config = json.dumps(peft_config(delta, base_model), indent=2, sort_keys=True) + "\n"
    weights = save_safetensors(peft_tensors(delta), metadata={"format": "pt"})
    return {ADAPTER_CONFIG: config.encode(), ADAPTER_WEIGHTS: weights}


def save_merged(lm: LoadedModel, directory: Path, record: Mapping[str, Any]) -> list[Path]:
    """Write ``lm`` as it is now (edits merged into its weights) with ``save_pretrained``, and its tokenizer.

    The weights are safetensors; ``record`` (which edits, from where) goes to ``creme_merged.json``.
    A plain ``AutoModelForCausalLM.from_pretrained(directory)`` loads the result. Returns the files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    (directory / MERGED_RECORD).write_text(json.dumps(dict(record), indent=2, sort_keys=True) + "\n")
    return sorted(p for p in directory.iterdir() if p.is_file())
