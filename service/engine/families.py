"""Family adapters: where each supported architecture keeps the modules CREME touches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedModelError(ValueError):
    """The model's architecture has no adapter."""


@dataclass(frozen=True)
class FamilyAdapter:
    """Module paths of one architecture family, relative to the ``*ForCausalLM`` model.

    ``out_proj`` is the edited attention output projection, relative to a block.
    ``weight_in_out`` is true for GPT-2's Conv1D, whose weight is stored [in, out].
    """

    name: str
    model_types: tuple[str, ...]
    blocks: str
    attn: str
    out_proj: str
    mlp: str
    final_norm: str
    weight_in_out: bool = False

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)  # type: ignore[return-value]

    def n_layers(self, model: nn.Module) -> int:
        return len(self.block_list(model))

    def block(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block_list(model)[layer]

    def attention(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block(model, layer).get_submodule(self.attn)

    def mlp_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block(model, layer).get_submodule(self.mlp)

    def out_proj_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.block(model, layer).get_submodule(self.out_proj)

    def out_proj_name(self, layer: int) -> str:
        """Fully qualified parameter name of the edited weight of ``layer``."""
        return f"{self.blocks}.{layer}.{self.out_proj}.weight"

    def norm(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.final_norm)

    def unembedding(self, model: nn.Module) -> torch.Tensor:
        """The unembedding matrix W_U, shape [vocab, d_model] (GPT-NeoX's is ``embed_out`` before 5.x)."""
        return model.get_output_embeddings().weight

    def delta_as_weight(self, r: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The update r uᵀ (r [out, k], u [in, k]) in the layout the weight is stored in."""
        delta_out_in = r @ u.T
        return delta_out_in.T if self.weight_in_out else delta_out_in


_LLAMA = FamilyAdapter(
    name="llama",
    model_types=("llama", "mistral", "qwen2", "qwen3", "smollm3"),
    blocks="model.layers",
    attn="self_attn",
    out_proj="self_attn.o_proj",
    mlp="mlp",
    final_norm="model.norm",
)
_GPT2 = FamilyAdapter(
    name="gpt2",
    model_types=("gpt2",),
    blocks="transformer.h",
    attn="attn",
    out_proj="attn.c_proj",
    mlp="mlp",
    final_norm="transformer.ln_f",
    weight_in_out=True,
)
_GPTJ = FamilyAdapter(
    name="gptj",
    model_types=("gptj",),
    blocks="transformer.h",
    attn="attn",
    out_proj="attn.out_proj",
    mlp="mlp",
    final_norm="transformer.ln_f",
)
_GPT_NEOX = FamilyAdapter(
    name="gpt_neox",
    model_types=("gpt_neox",),
    blocks="gpt_neox.layers",
    attn="attention",
    out_proj="attention.dense",
    mlp="mlp",
    final_norm="gpt_neox.final_layer_norm",
)

FAMILIES: tuple[FamilyAdapter, ...] = (_LLAMA, _GPT2, _GPTJ, _GPT_NEOX)


def supported_model_types() -> list[str]:
    return sorted(t for family in FAMILIES for t in family.model_types)


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter for ``model``'s ``config.model_type``; a clear error for unknown families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedModelError(
        f"unsupported model type {model_type!r}; supported: {', '.join(supported_model_types())}"
    )
