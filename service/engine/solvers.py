"""Least-squares solvers that keep an edit local: generic-text keys and earlier edits' keys are protected.

For one layer with template keys K [T, d_in] and the value shifts R = V* - V_c [T, d_out], the
update minimises  ‖ΔW Kᵀ - Rᵀ‖² + μ·N·E‖ΔW k_generic‖² + w·Σ‖ΔW k_earlier‖²
+ nu·mean‖ΔW k_neighbour‖² + ridge, whose closed form (MEMIT's, with the earlier edits' keys added as
in AlphaEdit's sequential setting and the keys of neighbour prompts as preserved knowledge) is
ΔW = Rᵀ K A⁻¹,  A = KᵀK + μ C + rho·mean(diag C)·I + w Σ K_eᵀK_e + (nu/n) K_nᵀK_n.
The factors are r = Rᵀ [d_out, T] and u = A⁻¹Kᵀ [d_in, T]: rank T at most, revertible exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from service.engine.creme import LayerSample


@dataclass(frozen=True)
class ProtectedSolver:
    """Fit every template's key (or their mean) while protecting generic and earlier-edit keys."""

    second_moments: Mapping[int, torch.Tensor] | None  # C_l [d_in, d_in] of generic text; None: identity
    strength: float  # μ: weight of the generic keys
    ridge: float = 1e-2  # rho: relative Tikhonov term, keeps A well conditioned
    protected: Mapping[int, torch.Tensor] = field(default_factory=dict)  # layer → [n, d_in]
    protect_weight: float = 1.0  # w per earlier key
    gain: float = 1.0  # scales the value shift (>1 overshoots to make up for the damping)
    mean_key: bool = False
    neighbours: Mapping[int, torch.Tensor] = field(default_factory=dict)  # layer → [n, d_in]
    neighbour_weight: float = 0.0  # nu: weight of the neighbour keys' mean second moment

    def normal_matrix(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """A = KᵀK + μC + rho·mean(diag C)·I + w K_eᵀK_e + (nu/n) K_nᵀK_n for this layer."""
        eye = torch.eye(keys.shape[1], device=keys.device, dtype=torch.float32)
        if self.second_moments is None:  # plain least squares, the ridge scaled to the keys' size
            cov = eye * keys.pow(2).sum(dim=1).mean() / keys.shape[1]
        else:
            cov = self.second_moments[layer].to(keys.device, torch.float32)
        a = keys.T @ keys + self.strength * cov + self.ridge * cov.diagonal().mean() * eye
        earlier = self.protected.get(layer)
        if earlier is not None and earlier.numel():
            earlier = earlier.to(keys.device, torch.float32)
            a = a + self.protect_weight * earlier.T @ earlier
        near = self.neighbours.get(layer)
        if near is not None and near.numel() and self.neighbour_weight > 0:
            near = near.to(keys.device, torch.float32)
            a = a + self.neighbour_weight / near.shape[0] * near.T @ near
        return a

    def __call__(self, sample: LayerSample) -> tuple[torch.Tensor, torch.Tensor]:
        keys, shift = sample.keys.float(), (sample.targets - sample.values).float() * self.gain
        if self.mean_key:
            keys, shift = keys.mean(dim=0, keepdim=True), shift.mean(dim=0, keepdim=True)
        u = torch.linalg.solve(self.normal_matrix(sample.layer, keys).double(), keys.T.double()).float()
        return shift.T.contiguous(), u
