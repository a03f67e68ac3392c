"""Edit deltas: per-layer rank-one factors, serialised only as safetensors and verified before use."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from service.engine.loading import LoadedModel


class InvalidDeltaError(ValueError):
    """A delta that must not touch the weights: corrupt, non-finite, or for another model."""


@dataclass(frozen=True)
class LayerFactors:
    """ΔW_layer = r uᵀ in [out, in] layout; both float32 on the CPU."""

    layer: int
    u: torch.Tensor  # [d_in]: the mean key k̄
    r: torch.Tensor  # [d_out]: (v̄* − v̄_c) / ‖k̄‖²


@dataclass(frozen=True)
class EditDelta:
    """The factors of one edit, in ascending layer order, bound to the model they were computed on."""

    factors: tuple[LayerFactors, ...]
    base_fingerprint: str
    family: str

    @property
    def layers(self) -> list[int]:
        return [f.layer for f in self.factors]

    def to_bytes(self) -> bytes:
        tensors: dict[str, torch.Tensor] = {}
        for f in self.factors:
            tensors[f"layer.{f.layer}.u"] = f.u.contiguous()
            tensors[f"layer.{f.layer}.r"] = f.r.contiguous()
        metadata = {
            "base_fingerprint": self.base_fingerprint,
            "family": self.family,
            "layers": json.dumps(self.layers),
        }
        return save_safetensors(tensors, metadata=metadata)

    def shapes(self) -> dict[str, list[int]]:
        return {f"layer.{f.layer}": [int(f.r.numel()), int(f.u.numel())] for f in self.factors}

    def norms(self) -> dict[int, float]:
        """Frobenius norm of each layer's ΔW (= ‖r‖·‖u‖ for a rank-one matrix)."""
        return {f.layer: float(f.r.norm() * f.u.norm()) for f in self.factors}


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
            LayerFactors(layer=n, u=tensors[f"layer.{n}.u"].float(), r=tensors[f"layer.{n}.r"].float()) for n in layers
        )
    except (SafetensorError, KeyError, ValueError, TypeError) as exc:
        raise InvalidDeltaError(f"delta is not a readable CREME safetensors file: {exc}") from exc
    if sorted(tensors) != sorted(f"layer.{n}.{p}" for n in layers for p in "ur"):
        raise InvalidDeltaError("delta tensors do not match its layer list")
    return EditDelta(factors=factors, base_fingerprint=metadata["base_fingerprint"], family=metadata["family"])


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
        if not 0 <= f.layer < lm.n_layers:
            raise InvalidDeltaError(f"delta layer {f.layer} is outside 0..{lm.n_layers - 1}")
        weight = lm.adapter.out_proj_module(lm.model, f.layer).weight
        d_out, d_in = (weight.shape[1], weight.shape[0]) if lm.adapter.weight_in_out else weight.shape
        if f.u.shape != (d_in,) or f.r.shape != (d_out,):
            raise InvalidDeltaError(
                f"layer {f.layer}: factor shapes u{tuple(f.u.shape)} r{tuple(f.r.shape)} "
                f"do not fit a [{d_out}, {d_in}] weight"
            )
        if not (torch.isfinite(f.u).all() and torch.isfinite(f.r).all()):
            raise InvalidDeltaError(f"layer {f.layer}: delta contains NaN or infinity")
