"""Weight state with many active edits: each change rebuilds only its own layers, and the result is
always the documented formula (pristine + one product of the factors stacked in content order)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterator, Sequence
from functools import partial

import pytest
import torch

import service.engine.weights as weights_module
from service.engine.delta import EditDelta, InvalidDeltaError, LayerFactors
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState, content_key


def _delta(lm: LoadedModel, layers: Sequence[int], seed: int, rank: int = 1) -> EditDelta:
    g = torch.Generator().manual_seed(seed)
    factors = tuple(
        LayerFactors(layer, torch.randn(576, rank, generator=g) * 0.1, torch.randn(576, rank, generator=g) * 0.05)
        for layer in sorted(layers)
    )
    return EditDelta(factors, lm.fingerprint, lm.adapter.name)


@pytest.fixture(scope="module")
def many(smol: LoadedModel) -> list[tuple[str, EditDelta]]:
    """61 edits on overlapping bands of layers 6-24: ranks 1-3, strided factors, a delta under two ids, equal deltas."""
    rng = random.Random(0)
    edits = []
    for i in range(57):
        first = rng.randint(6, 16)
        edits.append((f"e{i}", _delta(smol, range(first, first + rng.randint(1, 9)), seed=i)))
    edits.append(("rank3", _delta(smol, [12, 13], seed=100, rank=3)))
    strided = _delta(smol, [11, 14], seed=101, rank=2)  # factors as non-contiguous views
    views = tuple(LayerFactors(f.layer, f.u.T.contiguous().T, f.r.T.contiguous().T) for f in strided.factors)
    edits.append(("strided", dataclasses.replace(strided, factors=views)))
    edits.append(("alias", edits[0][1]))  # the same object again
    edits.append(("twin", _delta(smol, edits[1][1].layers, seed=1)))  # equal content, another object
    return edits


@pytest.fixture
def state(smol: LoadedModel) -> Iterator[WeightState]:
    weights = WeightState(smol)
    try:
        yield weights
    finally:
        weights.set_active([])


def _weights(lm: LoadedModel) -> list[torch.Tensor]:
    return [lm.adapter.out_proj_module(lm.model, n).weight.data for n in range(lm.n_layers)]


def _written_by(lm: LoadedModel, change: Callable[[], object]) -> set[int]:
    """The layers whose weight ``change`` writes: each weight is marked before, and the mark stays where unwritten."""
    weights, mark = _weights(lm), 1234.5
    saved = [w[0, 0].clone() for w in weights]
    for w in weights:
        w[0, 0] = mark
    try:
        change()
    finally:
        written = {n for n, w in enumerate(weights) if w[0, 0] != mark}
        for n, w in enumerate(weights):
            if n not in written:
                w[0, 0] = saved[n]
    return written


def _reference(
    lm: LoadedModel, pristine: list[torch.Tensor], edits: Sequence[tuple[str, EditDelta]]
) -> list[torch.Tensor]:
    """Every weight as the class docstring defines it, computed from scratch."""
    out = []
    for layer, weight in enumerate(pristine):
        factors = sorted((f for _, d in edits for f in d.factors if f.layer == layer), key=content_key)
        if not factors:
            out.append(weight)
            continue
        r, u = torch.cat([f.r for f in factors], dim=1), torch.cat([f.u for f in factors], dim=1)
        out.append((weight.float() + lm.adapter.delta_as_weight(r, u)).to(weight.dtype))
    return out


def _assert_matches(lm: LoadedModel, pristine: list[torch.Tensor], edits: Sequence[tuple[str, EditDelta]]) -> None:
    for layer, (now, expected) in enumerate(zip(_weights(lm), _reference(lm, pristine, edits), strict=True)):
        assert torch.equal(now, expected), f"layer {layer} differs from a from-scratch rebuild"


def test_every_change_equals_a_rebuild_and_touches_only_its_layers(
    smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState
) -> None:
    pristine = [w.clone() for w in _weights(smol)]
    for edit in many:
        state.apply(*edit)
    _assert_matches(smol, pristine, many)
    rng = random.Random(1)
    for _ in range(12):
        edit_id, delta = state.active[rng.choice([0, len(state.active) // 2, len(state.active) - 1])]
        written = _written_by(smol, partial(state.revert, edit_id))
        assert written == set(delta.layers), f"reverting {edit_id} wrote layers {sorted(written)}"
        _assert_matches(smol, pristine, state.active)
        if rng.random() < 0.5:
            state.apply(edit_id, delta)
            _assert_matches(smol, pristine, state.active)
    state.set_active([])
    assert all(torch.equal(now, was) for now, was in zip(_weights(smol), pristine, strict=True))


def test_the_same_set_gives_the_same_bits_in_any_order(
    smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState
) -> None:
    for edit in many:
        state.apply(*edit)
    forward = state.checksum()
    state.set_active([])
    shuffled = list(many)
    random.Random(2).shuffle(shuffled)
    for edit in shuffled[:30]:
        state.apply(*edit)
    state.set_active(shuffled)  # the rest at once, and the first 30 in another order
    assert state.checksum() == forward
    fresh = WeightState(smol)
    state.set_active([])
    fresh.set_active(list(reversed(many)))
    assert fresh.checksum() == forward
    fresh.set_active([])


def test_reordering_rewrites_nothing(smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState) -> None:
    state.set_active(many)
    fingerprint = state.fingerprint()
    assert _written_by(smol, lambda: state.set_active(list(reversed(many)))) == set()
    assert state.fingerprint() != fingerprint and state.active_ids == [i for i, _ in reversed(many)]


def test_a_failed_change_leaves_state_and_later_changes_exact(
    smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState
) -> None:
    pristine = [w.clone() for w in _weights(smol)]
    state.set_active(many[:40])
    checksum = state.checksum()
    first = many[3][1].factors[0]
    overflow = dataclasses.replace(
        many[3][1], factors=(LayerFactors(first.layer, first.u * 1e30, first.r * 1e30), *many[3][1].factors[1:])
    )
    with pytest.raises(InvalidDeltaError, match="non-finite"):
        state.set_active([*many[5:], ("overflow", overflow)])
    assert state.checksum() == checksum
    assert state.active_ids == [i for i, _ in many[:40]]
    state.revert("e10")
    state.apply(*many[45])
    _assert_matches(smol, pristine, state.active)


def test_an_id_given_another_delta_follows_it(
    smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState
) -> None:
    pristine = [w.clone() for w in _weights(smol)]
    state.set_active([("x", many[0][1]), *many[1:5]])
    state.set_active([("x", many[7][1]), *many[1:5]])
    _assert_matches(smol, pristine, [("x", many[7][1]), *many[1:5]])


def test_each_delta_is_validated_once_while_known(
    smol: LoadedModel, many: list[tuple[str, EditDelta]], state: WeightState, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[EditDelta] = []
    validate = weights_module.validate_for
    monkeypatch.setattr(weights_module, "validate_for", lambda d, lm: (calls.append(d), validate(d, lm)))
    for edit in many[:20]:
        state.apply(*edit)
    assert len(calls) == 20
    state.revert("e3")
    with state.pristine():
        pass
    with state.trial("t", many[30][1]):
        pass
    state.apply(*many[3])  # reverted two states ago: checked again
    assert len(calls) == 22
