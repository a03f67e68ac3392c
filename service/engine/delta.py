"""Edit deltas: per-layer rank-one factors, serialised only as safetensors and verified before use."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.engine.inputs import layer_problem
from service.engine.loading import LoadedModel

DELTA_FORMAT = "creme-delta/2"  # rank-k factors [d, k], optional keys, method and params


class InvalidDeltaError(ValueError):
    """A delta that must not touch the weights: corrupt, non-finite, or for another model."""


@dataclass(frozen=True)
class LayerFactors:
    """ΔW_layer = r uᵀ in [out, in] layout, rank k; float32 on the CPU.

    ``u`` is [d_in, k] and ``r`` is [d_out, k] (1-D factors are read as rank one). ``keys`` are the
    edit's own keys at this layer ([n, d_in]), kept so that later edits can protect this one.
    """

    layer: int
    u: torch.Tensor
    r: torch.Tensor
    keys: torch.Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("u", "r"):
            value = getattr(self, name)
            if value.dim() == 1:
                object.__setattr__(self, name, value.unsqueeze(1))

    @property
    def rank(self) -> int:
        return int(self.u.shape[1])


@dataclass(frozen=True)
class EditDelta:
    """The factors of one edit, in ascending layer order, bound to the model they were computed on.

    ``method`` and ``params`` say how it was computed, so that it can be reproduced.
    """

    factors: tuple[LayerFactors, ...]
    base_fingerprint: str
    family: str
    method: str = "creme"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return [f.layer for f in self.factors]

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        for f in self.factors:
            tensors[f"layer.{f.layer}.u"] = f.u.contiguous()
            tensors[f"layer.{f.layer}.r"] = f.r.contiguous()
            if f.keys is not None:
                tensors[f"layer.{f.layer}.keys"] = f.keys.contiguous()
        metadata = {
            "format": DELTA_FORMAT,
            "base_fingerprint": self.base_fingerprint,
            "family": self.family,
            "layers": json.dumps(self.layers),
            "method": self.method,
            "params": json.dumps(self.params, sort_keys=True),
        }
        return save_safetensors(tensors, metadata=metadata)

    def scaled(self, gain: float, *, params: dict[str, Any]) -> EditDelta:
        """The same edit with every layer's value shift ``r`` multiplied by ``gain``, recorded by ``params``."""
        factors = tuple(f if gain == 1.0 else replace(f, r=f.r * gain) for f in self.factors)
        return replace(self, factors=factors, params=params)

    def shapes(self) -> dict[str, list[int]]:
        """[d_out, d_in, rank] of each layer's update."""
        return {f"layer.{f.layer}": [int(f.r.shape[0]), int(f.u.shape[0]), f.rank] for f in self.factors}

    def norms(self) -> dict[int, float]:
        """Frobenius norm of each layer's ΔW."""
        return {f.layer: float(torch.linalg.matrix_norm(f.r @ f.u.T)) for f in self.factors}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def delta_from_bytes(data: bytes, *, expected_sha256: str | None = None) -> EditDelta:
    """Parse safetensors bytes into an :class:`EditDelta`; raises :class:`InvalidDeltaError`."""
    if expected_sha256 is not None and sha256_hex(data) != expected_sha256:
        raise InvalidDeltaError("delta bytes do not match their sha256")
    try:
        tensors = load_safetensors(data)
        metadata = _metadata(data)
        layers = [int(x) for x in json.loads(metadata["layers"])]
        factors = tuple(
            LayerFactors(
                layer=n,
                u=tensors[f"layer.{n}.u"].float(),
                r=tensors[f"layer.{n}.r"].float(),
                keys=tensors[f"layer.{n}.keys"].float() if f"layer.{n}.keys" in tensors else None,
            )
            for n in layers
        )
        params = json.loads(metadata.get("params", "{}"))
        if not isinstance(params, dict):
            raise ValueError("params must be a JSON object")
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise InvalidDeltaError(f"delta is not a readable CREME safetensors file: {exc}") from exc
    expected = {f"layer.{n}.{p}" for n in layers for p in "ur"}
    if not expected <= set(tensors) or set(tensors) - expected - {f"layer.{n}.keys" for n in layers}:
        raise InvalidDeltaError("delta tensors do not match its layer list")
    return EditDelta(
        factors=factors,
        base_fingerprint=metadata["base_fingerprint"],
        family=metadata["family"],
        method=metadata.get("method", "creme"),
        params=params,
    )


def _metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def validate_for(delta: EditDelta, lm: LoadedModel) -> None:
    """Check the delta fits ``lm``: same base model, layers in range, right shapes, finite values."""
    if delta.base_fingerprint != lm.fingerprint:
        raise InvalidDeltaError(
            f"delta was computed for base model {delta.base_fingerprint}, this model is {lm.fingerprint}"
        )
    if delta.layers != sorted(set(delta.layers)):
        raise InvalidDeltaError(f"delta layers must be ascending and distinct: {delta.layers}")
    for f in delta.factors:
        if (problem := layer_problem(f.layer, lm.n_layers)) is not None:
            raise InvalidDeltaError(f"delta {problem}")
        weight = lm.adapter.out_proj_module(lm.model, f.layer).weight
        d_out, d_in = (weight.shape[1], weight.shape[0]) if lm.adapter.weight_in_out else weight.shape
        if f.u.dim() != 2 or f.u.shape[0] != d_in or f.r.shape != (d_out, f.u.shape[1]) or f.rank < 1:
            raise InvalidDeltaError(
                f"layer {f.layer}: factor shapes u{tuple(f.u.shape)} r{tuple(f.r.shape)} "
                f"do not fit a [{d_out}, {d_in}] weight"
            )
        if f.keys is not None and (f.keys.dim() != 2 or f.keys.shape[1] != d_in):
            raise InvalidDeltaError(f"layer {f.layer}: keys of shape {tuple(f.keys.shape)} do not fit d_in={d_in}")
        if not (torch.isfinite(f.u).all() and torch.isfinite(f.r).all()):
            raise InvalidDeltaError(f"layer {f.layer}: delta contains NaN or infinity")


def validate_alone(delta: EditDelta, n_layers: int | None = None) -> None:
    """The checks of :func:`validate_for` that need no model, for a delta from outside: at least one layer,
    layers ascending and distinct (and below ``n_layers`` when given), 2-D factors of one rank per layer,
    one [d_out, d_in] at every layer, keys that fit d_in, finite values (keys included).
    Raises :class:`InvalidDeltaError`."""
    if not delta.factors:
        raise InvalidDeltaError("delta has no layers")
    if delta.layers != sorted(set(delta.layers)):
        raise InvalidDeltaError(f"delta layers must be ascending and distinct: {delta.layers}")
    dims: set[tuple[int, int]] = set()
    for f in delta.factors:
        if (problem := layer_problem(f.layer, n_layers)) is not None:
            raise InvalidDeltaError(f"delta {problem}")
        if f.u.dim() != 2 or f.r.dim() != 2 or f.u.shape[1] != f.r.shape[1] or f.u.shape[1] < 1:
            raise InvalidDeltaError(
                f"layer {f.layer}: factors u{tuple(f.u.shape)} r{tuple(f.r.shape)} are not [d_in, k] and [d_out, k]"
            )
        if f.keys is not None and (f.keys.dim() != 2 or f.keys.shape[1] != f.u.shape[0]):
            raise InvalidDeltaError(
                f"layer {f.layer}: keys of shape {tuple(f.keys.shape)} do not fit d_in={f.u.shape[0]}"
            )
        tensors = (f.u, f.r) if f.keys is None else (f.u, f.r, f.keys)
        if not all(torch.isfinite(t).all() for t in tensors):
            raise InvalidDeltaError(f"layer {f.layer}: delta contains NaN or infinity")
        dims.add((int(f.r.shape[0]), int(f.u.shape[0])))
    if len(dims) > 1:
        raise InvalidDeltaError(f"delta layers disagree on the [d_out, d_in] of the weight: {sorted(dims)}")
