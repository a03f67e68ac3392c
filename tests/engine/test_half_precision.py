"""Half precision: float32 edits on float16 and bfloat16 tiny LLaMAs, applied and reverted bit for bit
(float32 alongside, as the control).

The device is ``CREME_TEST_DEVICE`` (default ``cpu``; ``benchmarks/gpu_check.py`` runs this file with ``cuda``).
"""

from __future__ import annotations

import os

import pytest
import torch

from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery
from service.engine.delta import EditDelta
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, load_tokenizer
from service.engine.methods import compute_with, method_spec
from service.engine.weights import WeightState, content_key
from tests.fixtures.models import cache_dir, tiny_llama_config

DEVICE = os.environ.get("CREME_TEST_DEVICE", "cpu")
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
QUERIES = {
    "a": (CompositionalQuery("The capital of the country where Mount Fuji is located is",
                             "the country where Mount Fuji is located", "Japan"), "Tokyo", [1, 2]),
    "b": (CompositionalQuery("The currency of the country whose capital is Paris is",
                             "the country whose capital is Paris", "France"), "euro", [2, 3]),
}  # fmt: skip


def half_tiny_llama(dtype: torch.dtype) -> LoadedModel:
    """The tiny random LLaMA of ``tests/fixtures/models.py`` (seed 0), built directly in ``dtype`` on DEVICE."""
    from transformers import AutoModelForCausalLM

    from service.engine.families import adapter_for
    from service.engine.loading import parameters_fingerprint

    tokenizer = load_tokenizer(EMBEDDED_MODEL, cache_dir=cache_dir())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(tokenizer)), dtype=dtype)
    model = model.to(DEVICE).eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        adapter=adapter_for(model),
        name=f"tiny-llama-{dtype}",
        fingerprint=parameters_fingerprint(model),
    )


@pytest.fixture(scope="module", params=DTYPES, ids=str)
def ctx(request: pytest.FixtureRequest) -> EditContext:
    lm = half_tiny_llama(request.param)
    return EditContext(lm, WeightState(lm))


@pytest.fixture(scope="module")
def deltas(ctx: EditContext) -> dict[str, EditDelta]:
    """Two published-method edits sharing layer 2."""
    return {
        name: compute_with(ctx, query, layers, method_spec("creme"), answer=answer).delta
        for name, (query, answer, layers) in QUERIES.items()
    }


def _state(lm: LoadedModel) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in lm.model.state_dict().items()}


def _assert_equal_bits(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{name} differs"


@pytest.mark.parametrize("method", ["creme", "least-squares", "local", "auto"])
def test_factors_are_float32_and_finite(ctx: EditContext, method: str) -> None:
    query, answer, layers = QUERIES["a"]
    before = _state(ctx.lm)
    delta = compute_with(ctx, query, layers, method_spec(method), answer=answer).delta
    _assert_equal_bits(_state(ctx.lm), before)
    assert delta.layers == layers
    for f in delta.factors:
        for tensor in (f.u, f.r, f.keys):
            assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
            assert torch.isfinite(tensor).all()


def test_apply_then_revert_restores_every_bit(ctx: EditContext, deltas: dict[str, EditDelta]) -> None:
    lm, weights = ctx.lm, ctx.weights
    pristine = _state(lm)
    weights.apply("a", deltas["a"])
    for layer in deltas["a"].layers:
        name = lm.adapter.out_proj_name(layer)
        assert not torch.equal(lm.model.state_dict()[name], pristine[name]), f"the edit left {name} unchanged"
    weights.revert("a")
    _assert_equal_bits(_state(lm), pristine)


def test_the_edited_weight_is_pristine_plus_the_float32_product(ctx: EditContext, deltas: dict[str, EditDelta]) -> None:
    lm, weights = ctx.lm, ctx.weights
    weight = lm.adapter.out_proj_module(lm.model, 2).weight
    pristine = weight.detach().clone()
    weights.set_active([("a", deltas["a"]), ("b", deltas["b"])])
    try:
        factors = sorted((next(f for f in d.factors if f.layer == 2) for d in deltas.values()), key=content_key)
        r = torch.cat([f.r for f in factors], dim=1).to(weight.device)
        u = torch.cat([f.u for f in factors], dim=1).to(weight.device)
        assert torch.equal(weight, (pristine.float() + r @ u.T).to(pristine.dtype))
    finally:
        weights.set_active([])


def test_reverting_one_edit_leaves_the_bits_of_the_other_alone(ctx: EditContext, deltas: dict[str, EditDelta]) -> None:
    lm, weights = ctx.lm, ctx.weights
    pristine = _state(lm)
    weights.apply("b", deltas["b"])
    b_alone = _state(lm)
    weights.revert("b")
    weights.apply("a", deltas["a"])
    weights.apply("b", deltas["b"])
    weights.revert("a")
    _assert_equal_bits(_state(lm), b_alone)
    weights.revert("b")
    _assert_equal_bits(_state(lm), pristine)


def test_the_same_edits_in_any_order_give_the_same_bits(ctx: EditContext) -> None:
    """Rank-22 least-squares edits: stacked in activation order, their sums differ in the last bit."""
    lm, weights = ctx.lm, ctx.weights
    a, b = (compute_with(ctx, q, layers, method_spec("least-squares")).delta for q, _, layers in QUERIES.values())
    weights.set_active([("a", a), ("b", b)])
    ab = _state(lm)
    weights.set_active([("x", b), ("y", a)])  # other order, other ids
    ba = _state(lm)
    weights.set_active([])
    _assert_equal_bits(ab, ba)


def test_pristine_copies_are_taken_only_for_touched_layers(ctx: EditContext, deltas: dict[str, EditDelta]) -> None:
    lm = ctx.lm
    weights = WeightState(lm)
    weights.checksum()
    assert weights.pristine_bytes == 0
    weight = lm.adapter.out_proj_module(lm.model, 0).weight
    layer_bytes = weight.numel() * weight.element_size()
    weights.apply("a", deltas["a"])  # layers 1, 2
    assert weights.pristine_bytes == 2 * layer_bytes
    weights.apply("b", deltas["b"])  # layers 2, 3
    assert weights.pristine_bytes == 3 * layer_bytes
    weights.set_active([])
    assert weights.pristine_bytes == 3 * layer_bytes
