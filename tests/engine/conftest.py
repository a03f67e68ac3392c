"""Fixtures: the embedded SmolLM2 (real knowledge) and tiny random-weight models (architecture coverage)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig

from service.engine.families import adapter_for
from service.engine.loading import LoadedModel, load_model, parameters_fingerprint


def cache_dir() -> Path:
    return Path(os.environ.get("CREME_CACHE_DIR", Path.home() / ".cache" / "creme"))


@pytest.fixture(scope="session")
def smol() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct, float32 on the CPU."""
    return load_model(cache_dir=cache_dir())


def _tiny(smol: LoadedModel, config: PretrainedConfig, name: str) -> LoadedModel:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=smol.tokenizer,
        adapter=adapter_for(model),
        name=name,
        fingerprint=parameters_fingerprint(model),
    )


@pytest.fixture(scope="session")
def tiny_llama(smol: LoadedModel) -> LoadedModel:
    config = LlamaConfig(
        vocab_size=len(smol.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return _tiny(smol, config, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_gpt2(smol: LoadedModel) -> LoadedModel:
    config = GPT2Config(vocab_size=len(smol.tokenizer), n_embd=64, n_layer=4, n_head=4, n_positions=256)
    return _tiny(smol, config, "tiny-gpt2")
