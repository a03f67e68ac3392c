"""Fixtures for the worker tests: the embedded model (once per session), tiny models, a Redis queue."""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from service.engine.families import adapter_for
from service.engine.loading import LoadedModel
from service.jobs.redis_queue import RedisQueue
from tests.fixtures.models import load_smol, tiny_llama_config, tiny_model
from tests.workers.support import Pair


@pytest.fixture(scope="session")
def smol_lm() -> LoadedModel:
    """The embedded SmolLM2-135M-Instruct, float32 on the CPU (tests must leave its weights pristine).

    A copy of the workers' own, not the engine tests' ``smol``: worker tests change and restore it.
    """
    return load_smol()


@pytest.fixture(scope="session")
def tiny_pair(smol_lm: LoadedModel) -> Pair:
    """Two identical copies of a tiny random LLaMA (4 layers): two workers of the same base model."""
    lm = tiny_model(smol_lm, tiny_llama_config(len(smol_lm.tokenizer)), "tiny-llama")
    twin = copy.deepcopy(lm.model)
    return lm, dataclasses.replace(lm, model=twin, adapter=adapter_for(twin))


@pytest.fixture
def pair(tiny_pair: Pair) -> Iterator[Pair]:
    """The tiny models, restored to their pristine weights after the test."""
    saved = [{n: p.clone() for n, p in lm.model.state_dict().items()} for lm in tiny_pair]
    yield tiny_pair
    for lm, state in zip(tiny_pair, saved, strict=True):
        lm.model.load_state_dict(state)


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
