"""Every supported family on a tiny random-weight model: edit, exact revert, lens; unknown families refused."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTJConfig, GPTNeoXConfig, OPTConfig, PretrainedConfig

from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.families import UnsupportedModelError, adapter_for
from service.engine.lens import lens_logits
from service.engine.loading import LoadedModel
from service.engine.prompts import encode
from service.engine.weights import WeightState
from tests.fixtures.models import tiny_gpt2_config, tiny_llama_config, tiny_model


def _configs(vocab: int) -> dict[str, PretrainedConfig]:
    return {
        "llama": tiny_llama_config(vocab),
        "gpt2": tiny_gpt2_config(vocab),
        "gptj": GPTJConfig(vocab_size=vocab, n_embd=64, n_layer=4, n_head=4, rotary_dim=8, n_positions=256),
        "gpt_neox": GPTNeoXConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
        ),
    }


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj", "gpt_neox"])
def test_family_edits_revert_and_lens(smol: LoadedModel, family: str) -> None:
    lm = tiny_model(smol, _configs(len(smol.tokenizer))[family], f"tiny-{family}")
    assert lm.adapter.name == family
    params = {n: p.clone() for n, p in lm.model.named_parameters()}
    query = CompositionalQuery("The capital of the land of Fuji is", "the land of Fuji", "Japan")
    fast = compute_edit(lm, query, [1, 2]).delta
    reference = compute_edit(lm, query, [1, 2], schedule="reference").delta
    for f, r in zip(fast.factors, reference.factors, strict=True):
        assert float((f.r - r.r).norm() / r.r.norm()) < 1e-4
        assert float((f.u - r.u).norm() / r.u.norm()) < 1e-4
    weights = WeightState(lm)
    weights.apply("e", fast)
    assert not torch.equal(lm.adapter.out_proj_module(lm.model, 1).weight, params[lm.adapter.out_proj_name(1)])
    weights.revert("e")
    assert all(torch.equal(params[n], p) for n, p in lm.model.named_parameters())
    per_layer, _, _ = lens_logits(lm, "The capital of Japan is")
    logits = lm.model(**encode(lm, ["The capital of Japan is"]).model_inputs()).logits[0, -1]
    assert torch.allclose(per_layer[-1], logits, atol=1e-4)


def test_unknown_family_names_the_supported_ones(smol: LoadedModel) -> None:
    config = OPTConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2)
    with pytest.raises(UnsupportedModelError, match=r"unsupported model type 'opt'; supported: .*gpt2.*llama"):
        tiny_model(smol, config, "tiny-opt")
    assert adapter_for(smol.model).name == "llama"
