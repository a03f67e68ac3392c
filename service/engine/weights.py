"""Explicit, exact weight state: pristine copies of touched weights plus the ordered active deltas."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from service.engine.delta import EditDelta, InvalidDeltaError, LayerFactors, validate_for
from service.engine.loading import LoadedModel


@dataclass(frozen=True)
class _Checked:
    """A delta that passed :func:`validate_for`, with the content key of each of its factors."""

    delta: EditDelta
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class _Stack:
    """A layer's active factors in content order: ``keys[i]`` names columns ``starts[i]:starts[i] + ranks[i]``."""

    keys: tuple[bytes, ...]
    ranks: tuple[int, ...]
    r: torch.Tensor  # [d_out, Σk] float32, on the weight's device
    u: torch.Tensor  # [d_in, Σk]

    @property
    def starts(self) -> list[int]:
        out, at = [], 0
        for rank in self.ranks:
            out.append(at)
            at += rank
        return out


class WeightState:
    """Applies and reverts edits by rebuilding each touched weight from its pristine copy.

    A touched weight is always ``pristine + Σ active ΔW``, the sum taken in float32 as one product
    of the stacked factors, then cast to the model dtype; with no delta touching it the pristine
    tensor is copied back, so reverting everything restores the loaded model bit for bit. The
    factors are stacked in an order fixed by their content, so one set of edits gives the same
    bits whatever the order they were activated in. A layer's pristine copy is taken the first
    time an edit touches it.

    A change rebuilds only the layers of the deltas it adds or removes; the other weights are not
    written. Each layer keeps its factors stacked in content order and a change is spliced into
    that stack (one copy), so a rebuild is that copy plus the one product. A delta is validated
    and its content keys taken once while it is active or was active in the previous state (so
    :meth:`pristine` and :meth:`trial` check only what is new); deltas are known by identity and
    must not be changed in place once passed in. :meth:`set_active` is all-or-nothing: every new
    delta is validated and every rebuilt weight checked finite before any weight is written.
    """

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self._pristine: dict[int, torch.Tensor] = {}
        self._active: list[tuple[str, EditDelta]] = []
        self._stacks: dict[int, _Stack] = {}
        self._checked: dict[int, _Checked] = {}  # by id() of the delta, which the entry keeps alive

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
        edits = list(edits)
        checked = [self._check(delta) for _, delta in edits]
        before = Counter(id(delta) for _, delta in self._active)
        after = Counter(id(c.delta) for c in checked)
        known = {**{id(d): self._checked[id(d)] for _, d in self._active}, **{id(c.delta): c for c in checked}}
        removed = _factors(known, before - after)
        added = _factors(known, after - before)
        stacks = {
            layer: self._restacked(layer, removed.get(layer, []), added.get(layer, []))
            for layer in sorted({*removed, *added})
        }
        rebuilt = {layer: self._rebuilt(layer, stack) for layer, stack in stacks.items()}
        for layer, weight in rebuilt.items():
            if not torch.isfinite(weight).all():
                raise InvalidDeltaError(f"layer {layer}: applying the edits would make the weight non-finite")
        for layer, weight in rebuilt.items():
            self._weight(layer).copy_(weight)
        for layer, stack in stacks.items():
            if stack is None:
                self._stacks.pop(layer, None)
            else:
                self._stacks[layer] = stack
        self._active = edits
        self._checked = known  # the deltas of this state and of the one before

    def _check(self, delta: EditDelta) -> _Checked:
        """``delta`` validated for this model and keyed, at most once while it stays known."""
        entry = self._checked.get(id(delta))
        if entry is not None and entry.delta is delta:
            return entry
        validate_for(delta, self.lm)
        return _Checked(delta, tuple(content_key(f) for f in delta.factors))

    def _restacked(
        self, layer: int, removed: list[tuple[bytes, LayerFactors]], added: list[tuple[bytes, LayerFactors]]
    ) -> _Stack | None:
        """The stack of ``layer`` less ``removed`` plus ``added``, in content order (None: no factor left)."""
        old = self._stacks.get(layer)
        device = self._weight(layer).device
        sources = [] if old is None else [(old.r, old.u)]
        pool: list[tuple[bytes, int, int, int]] = []  # key, source, first column in it, rank
        if old is not None:
            gone = Counter(key for key, _ in removed)
            for key, rank, start in zip(old.keys, old.ranks, old.starts, strict=True):
                if gone[key]:
                    gone[key] -= 1
                else:
                    pool.append((key, 0, start, rank))
        for key, factors in added:
            pool.append((key, len(sources), 0, factors.rank))
            sources.append((factors.r.to(device, torch.float32), factors.u.to(device, torch.float32)))
        if not pool:
            return None
        pool.sort(key=lambda item: item[0])
        runs: list[list[int]] = []  # [source, first column, end column]: neighbours in order and in their source
        for _, source, start, rank in pool:
            if runs and runs[-1][0] == source and runs[-1][2] == start:
                runs[-1][2] += rank
            else:
                runs.append([source, start, start + rank])
        r = torch.cat([_columns(sources[i][0], first, end) for i, first, end in runs], dim=1)  # copied once
        u = torch.cat([_columns(sources[i][1], first, end) for i, first, end in runs], dim=1)
        return _Stack(tuple(item[0] for item in pool), tuple(item[3] for item in pool), r, u)

    def _weight(self, layer: int) -> torch.Tensor:
        return self.lm.adapter.out_proj_module(self.lm.model, layer).weight.data

    def _pristine_weight(self, layer: int) -> torch.Tensor:
        """The loaded weight of ``layer``, copied the first time an edit touches it."""
        if layer not in self._pristine:
            self._pristine[layer] = self._weight(layer).clone()
        return self._pristine[layer]

    def _rebuilt(self, layer: int, stack: _Stack | None) -> torch.Tensor:
        pristine = self._pristine_weight(layer)
        if stack is None:
            return pristine
        update = self.lm.adapter.delta_as_weight(stack.r, stack.u)
        return (pristine.to(torch.float32) + update).to(pristine.dtype)


def _columns(tensor: torch.Tensor, first: int, end: int) -> torch.Tensor:
    return tensor if first == 0 and end == tensor.shape[1] else tensor[:, first:end]


def _factors(known: dict[int, _Checked], deltas: Counter[int]) -> dict[int, list[tuple[bytes, LayerFactors]]]:
    """The (content key, factors) of each delta counted in ``deltas``, by layer."""
    out: dict[int, list[tuple[bytes, LayerFactors]]] = {}
    for delta_id, count in deltas.items():
        entry = known[delta_id]
        for key, factors in zip(entry.keys, entry.delta.factors, strict=True):
            out.setdefault(factors.layer, []).extend([(key, factors)] * count)
    return out


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
