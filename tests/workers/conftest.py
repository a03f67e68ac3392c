"""Fixtures for the worker tests: the embedded model (once per session), tiny models, a Redis queue."""

from __future__ import annotations

import copy
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from service.engine.families import adapter_for
from service.engine.loading import LoadedModel, load_model, parameters_fingerprint
from service.jobs.redis_queue import RedisQueue


def cache_dir() -> Path:
    return Path(os.environ.get("CREME_CACHE_DIR", Path.home() / ".cache" / "creme"))


@pytest.fixture(scope="session")
def smol_lm() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct, float32 on the CPU (tests must leave its weights pristine)."""
    return load_model(cache_dir=cache_dir())


@pytest.fixture(scope="session")
def tiny_pair(smol_lm: LoadedModel) -> tuple[LoadedModel, LoadedModel]:
    """Two identical copies of a tiny random LLaMA (4 layers): two workers of the same base model."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smol_lm.tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval().requires_grad_(False)
    fingerprint = parameters_fingerprint(model)
    return tuple(  # type: ignore[return-value]
        LoadedModel(
            model=m, tokenizer=smol_lm.tokenizer, adapter=adapter_for(m), name="tiny-llama", fingerprint=fingerprint
        )
        for m in (model, copy.deepcopy(model))
    )


@pytest.fixture
def make_redis_queue(redis_url: str) -> Iterator[Callable[..., RedisQueue]]:
    """RedisQueues on a fresh stream and nudge channel for this test; keys deleted afterwards."""
    prefix = f"creme-test:{uuid.uuid4().hex}"
    made: list[RedisQueue] = []

    def make(**options: Any) -> RedisQueue:
        queue = RedisQueue(redis_url, stream=f"{prefix}:jobs", nudge_channel=f"{prefix}:nudge", **options)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.close()
    client = redis.Redis.from_url(redis_url)
    client.delete(f"{prefix}:jobs")
    client.close()
