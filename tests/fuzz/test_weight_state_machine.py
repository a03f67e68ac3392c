"""Stateful fuzzing of the engine's WeightState over real CREME deltas on a tiny LLaMA.

After every step the weights must equal, bit for bit, a pristine copy of the model with the same
ordered edits applied through a fresh WeightState; invalid steps raise and change nothing; with
every edit reverted the model is bit-identical to the pristine one.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule, run_state_machine_as_test

from service.engine.delta import EditDelta, InvalidDeltaError, LayerFactors
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from tests.fuzz.stateful import EDIT_IDS, N_EDITS, STATEFUL_SETTINGS, ActiveListMachine


def _broken(delta: EditDelta, kind: str, n_layers: int) -> EditDelta:
    """``delta`` made invalid for the model in one way."""
    first = delta.factors[0]
    if kind == "fingerprint":
        return dataclasses.replace(delta, base_fingerprint="0" * 32)
    if kind == "nan":
        factor = LayerFactors(first.layer, first.u, torch.full_like(first.r, float("nan")))
    elif kind == "layer":
        factor = LayerFactors(n_layers, first.u, first.r)
    elif kind == "shape":
        factor = LayerFactors(first.layer, first.u[:-1], first.r)
    else:  # "overflow": finite factors whose sum with the weight is not finite
        factor = LayerFactors(first.layer, first.u * 1e30, first.r * 1e30)
    return dataclasses.replace(delta, factors=(factor, *delta.factors[1:]))


BROKEN_KINDS = ("fingerprint", "nan", "layer", "shape", "overflow")


def weight_state_machine(lm: LoadedModel, deltas: dict[str, EditDelta]) -> type[ActiveListMachine]:
    pristine = {name: p.detach().clone() for name, p in lm.model.named_parameters()}
    reference = dataclasses.replace(lm, model=copy.deepcopy(lm.model))

    def from_scratch(active: list[str]) -> WeightState:
        """The reference: the pristine model with ``active`` applied in order by a fresh WeightState."""
        for name, param in reference.model.named_parameters():
            param.data.copy_(pristine[name])
        weights = WeightState(reference)
        for edit_id in active:
            weights.apply(edit_id, deltas[edit_id])
        return weights

    class WeightStateMachine(ActiveListMachine):
        def __init__(self) -> None:
            super().__init__()
            self.lm = dataclasses.replace(lm, model=copy.deepcopy(lm.model))
            self.weights = WeightState(self.lm)

        def do_apply(self, edit_id: str) -> None:
            self.weights.apply(edit_id, deltas[edit_id])  # a no-op when already active
            if edit_id not in self.active:
                self.active.append(edit_id)

        def do_revert(self, edit_id: str) -> None:
            if edit_id not in self.active:
                with pytest.raises(KeyError):
                    self.weights.revert(edit_id)
                return
            self.weights.revert(edit_id)
            self.active.remove(edit_id)

        def do_set_active(self, edit_ids: list[str]) -> None:
            self.weights.set_active([(edit_id, deltas[edit_id]) for edit_id in edit_ids])
            self.active = list(edit_ids)

        @rule(
            order=st.permutations(range(N_EDITS)),
            k=st.integers(0, N_EDITS),
            kind=st.sampled_from(BROKEN_KINDS),
            data=st.data(),
        )
        def set_active_with_a_broken_delta(self, order: list[int], k: int, kind: str, data: st.DataObject) -> None:
            """All or nothing: one invalid delta anywhere in the list and nothing changes."""
            edits = [(EDIT_IDS[j], deltas[EDIT_IDS[j]]) for j in order[:k]]
            bad = _broken(deltas[data.draw(st.sampled_from(EDIT_IDS), label="broken")], kind, self.lm.n_layers)
            edits.insert(data.draw(st.integers(0, len(edits)), label="at"), ("broken", bad))
            with pytest.raises(InvalidDeltaError):
                self.weights.set_active(edits)

        @invariant()
        def weights_match_a_model_built_from_scratch(self) -> None:
            assert self.weights.active_ids == self.active
            expected = from_scratch(self.active)
            assert self.weights.fingerprint() == expected.fingerprint()
            for (name, param), (_, ref) in zip(
                self.lm.model.named_parameters(), reference.model.named_parameters(), strict=True
            ):
                assert torch.equal(param, ref), f"{name} differs with active edits {self.active}"

        def check_pristine(self) -> None:
            assert self.weights.active_ids == []
            for name, param in self.lm.model.named_parameters():
                assert torch.equal(param, pristine[name]), f"{name} is not pristine after reverting every edit"

    return WeightStateMachine


def test_weight_state_apply_revert_sequences(tiny_lm: LoadedModel, tiny_deltas: dict[str, EditDelta]) -> None:
    assert sorted(tiny_deltas) == sorted(EDIT_IDS)
    layers = [set(delta.layers) for delta in tiny_deltas.values()]
    assert any(a & b for i, a in enumerate(layers) for b in layers[i + 1 :]), "the deltas should share layers"
    run_state_machine_as_test(weight_state_machine(tiny_lm, tiny_deltas), settings=STATEFUL_SETTINGS)


def test_the_reference_sees_every_edit(tiny_lm: LoadedModel, tiny_deltas: dict[str, EditDelta]) -> None:
    """Each delta really changes the weights it touches (else bit-equality would prove little)."""
    machine = weight_state_machine(tiny_lm, tiny_deltas)()
    for edit_id, delta in tiny_deltas.items():
        machine.do_set_active([edit_id])
        for layer in delta.layers:
            weight = machine.lm.adapter.out_proj_module(machine.lm.model, layer).weight
            pristine = tiny_lm.adapter.out_proj_module(tiny_lm.model, layer).weight
            assert not torch.equal(weight, pristine), f"{edit_id} left layer {layer} unchanged"
    machine.do_set_active([])
    machine.check_pristine()
