"""What edit methods and safety checks use besides the query: the weight state and per-model caches."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from service.engine.keystats import key_statistics
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState

T = TypeVar("T")


@dataclass
class EditContext:
    """A loaded model, its exact weight state (the active edits) and the folder caching its statistics.

    Statistics and canaries are measured on the pristine model, once per base model (cached on disk
    under ``cache_dir`` by fingerprint, and in memory here).
    """

    lm: LoadedModel
    weights: WeightState
    cache_dir: Path | None = None
    _moments: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    _state_memo: tuple[str, dict[Hashable, Any]] = field(default=("", {}), repr=False)

    def per_state(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()`` once per model state (active edits): readings of the state an edit starts from."""
        state = self.weights.fingerprint()
        if self._state_memo[0] != state:
            self._state_memo = (state, {})
        memo = self._state_memo[1]
        if key not in memo:
            memo[key] = compute()
        return memo[key]

    def second_moments(self, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """C_l of generic text for each of ``layers`` ([d_in, d_in], float32)."""
        missing = [layer for layer in layers if layer not in self._moments]
        if missing:
            with self.weights.pristine():
                self._moments.update(key_statistics(self.lm, missing, self.cache_dir).second_moments)
        return {layer: self._moments[layer] for layer in layers}

    def protected_keys(self, layers: Sequence[int]) -> dict[int, torch.Tensor]:
        """Each layer's keys of the active edits, stacked [n, d_in]."""
        found: dict[int, list[torch.Tensor]] = {}
        for _, delta in self.weights.active:
            for f in delta.factors:
                if f.layer in layers and f.keys is not None:
                    found.setdefault(f.layer, []).append(f.keys)
        return {layer: torch.cat(keys) for layer, keys in found.items()}
