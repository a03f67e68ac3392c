"""PEFT export with the real ``peft``: the adapter of an edit, loaded onto a fresh copy of the base model,
gives the logits of that edit as :class:`WeightState` applies it.

Merged by peft (``merge_and_unload``), the weights are bit for bit those WeightState makes, so the logits
are equal. Unmerged, peft adds ``(x u) rᵀ`` beside ``x Wᵀ``, a different float32 summation than
``x (W + r uᵀ)ᵀ``: measured on the embedded model, the logits (up to ~33 in size) then differ by at most
6.4e-5, against an effect of the edit of up to 6.8.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.delta import EditDelta, LayerFactors
from service.engine.export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, peft_adapter
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, resolve_model_dir
from service.engine.weights import WeightState
from tests.engine.helpers import failing_case
from tests.fixtures.models import cache_dir, tiny_gpt2_config, tiny_model

CASE = failing_case("mquake-2hop-0394")
PROMPTS = [CASE.compositional, "The capital of Japan is", "Hello world, my name is"]
MERGED_TOLERANCE = 1e-5  # measured: 0.0
UNMERGED_TOLERANCE = 1e-4  # measured: at most 6.4e-5 (float32 summation order)


@pytest.fixture(scope="module")
def creme_delta(smol: LoadedModel) -> EditDelta:
    """A real CREME edit (rank one at layers 12 and 13) of a two-hop question the model fails."""
    query = CompositionalQuery(CASE.compositional, CASE.hop1_phrase, CASE.bridge)
    return compute_edit(smol, query, [12, 13]).delta


def random_delta(lm: LoadedModel, ranks: dict[int, int], scale: float = 0.05) -> EditDelta:
    """A delta of the given rank at each layer, with seeded random factors (rank patterns a CREME edit lacks)."""
    weight = lm.adapter.out_proj_module(lm.model, 0).weight
    d_out, d_in = (weight.shape[1], weight.shape[0]) if lm.adapter.weight_in_out else weight.shape
    generator = torch.Generator().manual_seed(0)
    factors = tuple(
        LayerFactors(
            layer, torch.randn(d_in, k, generator=generator) * scale, torch.randn(d_out, k, generator=generator) * scale
        )
        for layer, k in sorted(ranks.items())
    )
    return EditDelta(factors=factors, base_fingerprint=lm.fingerprint, family=lm.adapter.name)


def logits(model: torch.nn.Module, lm: LoadedModel) -> list[torch.Tensor]:
    out = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out.append(model(**lm.tokenizer(prompt, return_tensors="pt")).logits.float())
    return out


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def applied(lm: LoadedModel, delta: EditDelta) -> tuple[list[torch.Tensor], dict[int, torch.Tensor]]:
    """Logits with ``delta`` applied by WeightState, and the edited weights; the model restored afterwards."""
    weights = WeightState(lm)
    weights.set_active([("edit", delta)])
    try:
        edited = {f.layer: lm.adapter.out_proj_module(lm.model, f.layer).weight.detach().clone() for f in delta.factors}
        return logits(lm.model, lm), edited
    finally:
        weights.set_active([])


def write_adapter(delta: EditDelta, name: str, folder: Path) -> dict:
    for file, data in peft_adapter(delta, name).items():
        (folder / file).write_bytes(data)
    return json.loads((folder / ADAPTER_CONFIG).read_text())


@pytest.mark.parametrize("kind", ["creme", "mixed ranks"])
def test_peft_adapter_gives_the_logits_of_the_applied_edit(
    smol: LoadedModel, creme_delta: EditDelta, kind: str, tmp_path: Path
) -> None:
    delta = creme_delta if kind == "creme" else random_delta(smol, {5: 3, 20: 1, 21: 2})
    base = logits(smol.model, smol)
    expected, edited_weights = applied(smol, delta)
    rank = max(f.rank for f in delta.factors)

    config = write_adapter(delta, smol.name, tmp_path)
    assert config["r"] == config["lora_alpha"] == rank  # scaling alpha / r = 1
    pattern = {f"model.layers.{f.layer}.self_attn.o_proj": f.rank for f in delta.factors if f.rank != rank}
    assert config["rank_pattern"] == config["alpha_pattern"] == pattern
    assert config["target_modules"] == ["o_proj"] and config["layers_to_transform"] == delta.layers
    assert config["base_model_name_or_path"] == EMBEDDED_MODEL
    parsed = LoraConfig.from_pretrained(str(tmp_path))
    assert parsed.r == rank and parsed.rank_pattern == pattern and parsed.layers_to_transform == delta.layers

    tensors = load_file(tmp_path / ADAPTER_WEIGHTS)
    prefix = "base_model.model.model.layers.{}.self_attn.o_proj.lora_{}.weight"
    assert set(tensors) == {prefix.format(f.layer, ab) for f in delta.factors for ab in "AB"}
    for f in delta.factors:
        assert (
            torch.equal(tensors[prefix.format(f.layer, "A")], f.u.T)
            and tensors[prefix.format(f.layer, "A")].shape[0] == f.rank
        )
        assert torch.equal(tensors[prefix.format(f.layer, "B")], f.r)

    fresh = AutoModelForCausalLM.from_pretrained(resolve_model_dir(EMBEDDED_MODEL, cache_dir()), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(fresh.eval(), str(tmp_path)).eval()
    wrapped = {name for name, _ in adapted.named_modules() if name.endswith(".lora_A.default")}
    assert wrapped == {
        f"base_model.model.model.layers.{layer}.self_attn.o_proj.lora_A.default" for layer in delta.layers
    }
    unmerged = logits(adapted, smol)
    merged_model = adapted.merge_and_unload()
    merged = logits(merged_model, smol)

    assert max_diff(merged, expected) <= MERGED_TOLERANCE
    for layer, weight in edited_weights.items():
        assert torch.equal(merged_model.model.layers[layer].self_attn.o_proj.weight, weight)
    assert max_diff(unmerged, expected) <= UNMERGED_TOLERANCE
    assert max_diff(expected, base) > 100 * UNMERGED_TOLERANCE  # the edit itself moves the logits far more


def test_gpt2_conv1d_adapter_is_fan_in_fan_out(smol: LoadedModel, tiny_gpt2: LoadedModel, tmp_path: Path) -> None:
    """GPT-2 stores its projection [in, out] (Conv1D): the same A/B factors, with ``fan_in_fan_out``."""
    delta = random_delta(tiny_gpt2, {1: 2, 3: 1}, scale=0.5)
    expected, edited_weights = applied(tiny_gpt2, delta)
    config = write_adapter(delta, tiny_gpt2.name, tmp_path)
    assert config["fan_in_fan_out"] is True and config["layers_pattern"] == "h"
    assert config["target_modules"] == ["attn.c_proj"]  # not the MLP's c_proj

    fresh = tiny_model(smol, tiny_gpt2_config(len(smol.tokenizer)), "tiny-gpt2").model  # the same seeded weights
    adapted = PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    wrapped = {name for name, _ in adapted.named_modules() if name.endswith(".lora_A.default")}
    assert wrapped == {f"base_model.model.transformer.h.{layer}.attn.c_proj.lora_A.default" for layer in (1, 3)}
    assert max_diff(logits(adapted, tiny_gpt2), expected) <= UNMERGED_TOLERANCE
    merged_model = adapted.merge_and_unload()
    assert max_diff(logits(merged_model, tiny_gpt2), expected) <= MERGED_TOLERANCE
    for layer, weight in edited_weights.items():
        assert torch.equal(merged_model.transformer.h[layer].attn.c_proj.weight, weight)
