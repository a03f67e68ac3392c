"""Weight state: apply/revert is exact, ordered, validated and all-or-nothing."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.delta import EditDelta, InvalidDeltaError, delta_from_bytes, sha256_hex
from service.engine.loading import LoadedModel
from service.engine.prompts import encode
from service.engine.weights import WeightState, content_key
from tests.engine.helpers import failing_case


@pytest.fixture(scope="module")
def deltas(smol: LoadedModel) -> list[EditDelta]:
    out = []
    for case_id, layers in (("mquake-2hop-0394", [10, 11, 12]), ("mquake-2hop-0295", [11, 12, 13])):
        case = failing_case(case_id)
        query = CompositionalQuery(case.compositional, case.hop1_phrase, case.bridge)
        out.append(compute_edit(smol, query, layers).delta)
    return out


def _logits(lm: LoadedModel) -> torch.Tensor:
    batch = encode(lm, ["The capital of the country that Daisuke Sasaki is a citizen of is", "Hello"])
    return lm.model(**batch.model_inputs()).logits


def test_revert_everything_is_bit_identical(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    params = {n: p.detach().clone() for n, p in smol.model.named_parameters()}
    logits = _logits(smol)
    weights = WeightState(smol)
    checksum = weights.checksum()
    weights.apply("a", deltas[0])
    weights.apply("b", deltas[1])
    assert weights.active_ids == ["a", "b"]
    assert not torch.equal(_logits(smol), logits)
    weights.revert("a")
    weights.revert("b")
    assert weights.active_ids == []
    assert all(torch.equal(params[n], p) for n, p in smol.model.named_parameters())
    assert torch.equal(_logits(smol), logits)
    assert weights.checksum() == checksum


def test_edited_weight_is_pristine_plus_float32_sum(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    weights = WeightState(smol)
    pristine = smol.adapter.out_proj_module(smol.model, 12).weight.detach().clone()
    weights.set_active([("a", deltas[0]), ("b", deltas[1])])
    try:
        layer12 = sorted((next(f for f in d.factors if f.layer == 12) for d in deltas), key=content_key)
        stacked_r = torch.cat([f.r for f in layer12], dim=1)
        stacked_u = torch.cat([f.u for f in layer12], dim=1)
        expected = pristine.float() + stacked_r @ stacked_u.T
        assert torch.equal(smol.adapter.out_proj_module(smol.model, 12).weight, expected)
    finally:
        weights.set_active([])


def test_state_fingerprint_depends_on_order(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    weights = WeightState(smol)
    base = weights.fingerprint()
    weights.set_active([("a", deltas[0]), ("b", deltas[1])])
    ab = weights.fingerprint()
    weights.set_active([("b", deltas[1]), ("a", deltas[0])])
    ba = weights.fingerprint()
    weights.set_active([])
    assert len({base, ab, ba}) == 3
    assert weights.fingerprint() == base


def test_trial_restores_previous_state(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    weights = WeightState(smol)
    weights.apply("a", deltas[0])
    checksum = weights.checksum()
    with weights.trial("t", deltas[1]):
        assert weights.active_ids == ["a", "t"]
        assert weights.checksum() != checksum
    assert weights.active_ids == ["a"]
    assert weights.checksum() == checksum
    weights.revert("a")


def test_safetensors_round_trip_and_tamper_detection(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    data = deltas[0].to_bytes()
    back = delta_from_bytes(data, expected_sha256=sha256_hex(data))
    assert back.layers == deltas[0].layers and back.base_fingerprint == smol.fingerprint
    assert all(
        torch.equal(a.r, b.r) and torch.equal(a.u, b.u) for a, b in zip(back.factors, deltas[0].factors, strict=True)
    )
    tampered = data[:-4] + b"\x00\x00\xc0\x7f"
    with pytest.raises(InvalidDeltaError, match="sha256"):
        delta_from_bytes(tampered, expected_sha256=sha256_hex(data))
    with pytest.raises(InvalidDeltaError, match="readable"):
        delta_from_bytes(b"not safetensors at all")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: dataclasses.replace(f, r=torch.full_like(f.r, float("nan"))), "NaN"),
        (lambda f: dataclasses.replace(f, u=f.u[:-1]), "shapes"),
        (lambda f: dataclasses.replace(f, layer=99), "outside"),
    ],
)
def test_invalid_deltas_change_nothing(smol: LoadedModel, deltas: list[EditDelta], mutate, message: str) -> None:
    weights = WeightState(smol)
    weights.apply("good", deltas[0])
    checksum = weights.checksum()
    bad = dataclasses.replace(deltas[1], factors=(*deltas[1].factors[:-1], mutate(deltas[1].factors[-1])))
    with pytest.raises(InvalidDeltaError, match=message):
        weights.apply("bad", bad)
    assert weights.active_ids == ["good"] and weights.checksum() == checksum
    weights.revert("good")


def test_delta_for_another_model_is_refused(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    foreign = dataclasses.replace(deltas[0], base_fingerprint="0" * 32)
    with pytest.raises(InvalidDeltaError, match="base model"):
        WeightState(smol).apply("x", foreign)


def test_rank_k_delta_round_trip_keeps_method_params_and_keys(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    g = torch.Generator().manual_seed(0)
    factors = tuple(
        dataclasses.replace(f, u=torch.randn(f.u.shape[0], 3, generator=g), r=torch.randn(f.r.shape[0], 3, generator=g))
        for f in deltas[0].factors
    )
    delta = dataclasses.replace(deltas[0], factors=factors, method="local", params={"strength": 100.0})
    back = delta_from_bytes(delta.to_bytes())
    assert back.method == "local" and back.params == {"strength": 100.0}
    for a, b in zip(back.factors, delta.factors, strict=True):
        assert a.rank == 3 and torch.equal(a.u, b.u) and torch.equal(a.r, b.r) and torch.equal(a.keys, b.keys)
    assert delta.shapes()[f"layer.{factors[0].layer}"][2] == 3
    weights = WeightState(smol)
    checksum = weights.checksum()
    weights.apply("k", back)
    assert weights.checksum() != checksum
    weights.revert("k")
    assert weights.checksum() == checksum


def test_rank_one_files_of_the_first_format_still_load(smol: LoadedModel, deltas: list[EditDelta]) -> None:
    from safetensors.torch import save

    f = deltas[0].factors[0]
    legacy = save(
        {f"layer.{f.layer}.u": f.u[:, 0].contiguous(), f"layer.{f.layer}.r": f.r[:, 0].contiguous()},
        metadata={"base_fingerprint": smol.fingerprint, "family": "llama", "layers": f"[{f.layer}]"},
    )
    back = delta_from_bytes(legacy)
    assert back.method == "creme" and back.factors[0].rank == 1 and back.factors[0].keys is None
    assert torch.equal(back.factors[0].u, f.u) and torch.equal(back.factors[0].r, f.r)
