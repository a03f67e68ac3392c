"""Explicit, exact weight state: pristine copies of touched weights plus the ordered active deltas."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from service.engine.delta import EditDelta, InvalidDeltaError, LayerFactors, validate_for
from service.engine.loading import LoadedModel


class WeightState:
    """Applies and reverts edits by rebuilding each touched weight from its pristine copy.

    A touched weight is always ``pristine + Σ active ΔW``, the sum taken in float32 as one product
    of the stacked factors, then cast to the model dtype; with no delta touching it the pristine
    tensor is copied back, so reverting everything restores the loaded model bit for bit. The
    factors are stacked in an order fixed by their content, so one set of edits gives the same
    bits whatever the order they were activated in. A layer's pristine copy is taken the first
    time an edit touches it.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._pristine: dict[int, torch.Tensor] = {}
        self._active: list[tuple[str, EditDelta]] = []

    @property
    def pristine_bytes(self) -> int:
        """Bytes held by the pristine copies (one per layer an edit has touched)."""
        return sum(t.numel() * t.element_size() for t in self._pristine.values())

    @property
    def active_ids(self) -> list[str]:
        return [edit_id for edit_id, _ in self._active]

    def fingerprint(self) -> str:
        """Identifies base model + ordered active edits (equal on every worker in the same state)."""
        digest = hashlib.sha256(self.lm.fingerprint.encode())
        for edit_id, _ in self._active:
            digest.update(b"\0" + edit_id.encode())
        return digest.hexdigest()[:32]

    def checksum(self) -> str:
        """sha256 of the bytes of every attention output weight as they are now."""
        digest = hashlib.sha256()
        for layer in range(self.lm.n_layers):
            weight = self._weight(layer).detach().to("cpu").contiguous()
            digest.update(weight.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def apply(self, edit_id: str, delta: EditDelta) -> None:
        """Activate ``delta`` on top of the current edits (no-op if already active)."""
        if edit_id in self.active_ids:
            return
        self.set_active([*self._active, (edit_id, delta)])

    def revert(self, edit_id: str) -> None:
        """Deactivate ``edit_id``; the other edits stay in their order."""
        if edit_id not in self.active_ids:
            raise KeyError(f"edit {edit_id} is not active on this model")
        self.set_active([(i, d) for i, d in self._active if i != edit_id])

    @property
    def active(self) -> list[tuple[str, EditDelta]]:
        """The active edits in order, with their deltas."""
        return list(self._active)

    @contextmanager
    def pristine(self) -> Iterator[None]:
        """The base model for the duration of the block (no edit active), then the same edits again."""
        previous = list(self._active)
        self.set_active([])
        try:
            yield
        finally:
            self.set_active(previous)

    @contextmanager
    def trial(self, edit_id: str, delta: EditDelta) -> Iterator[None]:
        """Apply ``delta`` for the duration of the block, then restore the previous state exactly."""
        previous = list(self._active)
        self.set_active([*previous, (edit_id, delta)])
        try:
            yield
        finally:
            self.set_active(previous)

    def set_active(self, edits: Sequence[tuple[str, EditDelta]]) -> None:
        """Bring the weights to exactly ``edits`` (ordered). All-or-nothing: on error nothing changes."""
        for _, delta in edits:
            validate_for(delta, self.lm)
        touched = {f.layer for _, d in [*self._active, *edits] for f in d.factors}
        rebuilt = {layer: self._rebuilt(layer, edits) for layer in sorted(touched)}
        for layer, weight in rebuilt.items():
            if not torch.isfinite(weight).all():
                raise InvalidDeltaError(f"layer {layer}: applying the edits would make the weight non-finite")
        for layer, weight in rebuilt.items():
            self._weight(layer).copy_(weight)
        self._active = list(edits)

    def _weight(self, layer: int) -> torch.Tensor:
        return self.lm.adapter.out_proj_module(self.lm.model, layer).weight.data

    def _pristine_weight(self, layer: int) -> torch.Tensor:
        """The loaded weight of ``layer``, copied the first time an edit touches it."""
        if layer not in self._pristine:
            self._pristine[layer] = self._weight(layer).clone()
        return self._pristine[layer]

    def _rebuilt(self, layer: int, edits: Sequence[tuple[str, EditDelta]]) -> torch.Tensor:
        pristine = self._pristine_weight(layer)
        deltas = sorted((f for _, d in edits for f in d.factors if f.layer == layer), key=content_key)
        if not deltas:
            return pristine
        r = torch.cat([f.r for f in deltas], dim=1)  # [d_out, Σk], in content order
        u = torch.cat([f.u for f in deltas], dim=1)  # [d_in, Σk]
        update = self.lm.adapter.delta_as_weight(r.to(pristine.device), u.to(pristine.device))
        return (pristine.to(torch.float32) + update).to(pristine.dtype)


def content_key(factors: LayerFactors) -> bytes:
    """sha256 of a layer's factors: the order in which :class:`WeightState` stacks them."""
    digest = hashlib.sha256()
    for tensor in (factors.u, factors.r):
        digest.update(f"{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().to("cpu").reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.digest()


@contextmanager
def restored_after(lm: LoadedModel, layers: Sequence[int]) -> Iterator[None]:
    """Snapshot the attention output weights of ``layers`` and put them back on exit, always."""
    saved = {n: lm.adapter.out_proj_module(lm.model, n).weight.data.clone() for n in layers}
    try:
        yield
    finally:
        for layer, weight in saved.items():
            lm.adapter.out_proj_module(lm.model, layer).weight.data.copy_(weight)


def add_in_place(lm: LoadedModel, layer: int, u: torch.Tensor, r: torch.Tensor) -> None:
    """W_layer ← W_layer + r uᵀ (r [d_out, k], u [d_in, k]), in float32 (used while computing an edit)."""
    weight = lm.adapter.out_proj_module(lm.model, layer).weight.data
    updated = weight.float() + lm.adapter.delta_as_weight(r, u).to(weight.device)
    weight.copy_(updated.to(weight.dtype))
