"""CREME: the closed-form rank-one edit of middle-layer attention output projections (CREME.md)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

from service.engine.delta import EditDelta, LayerFactors
from service.engine.hooks import Resume, Trace, block_path, run
from service.engine.inputs import check_layers, default_band, find_phrase, template_problem, wider_bands
from service.engine.loading import LoadedModel
from service.engine.options import DEFAULT_TEMPLATES
from service.engine.prompts import Batch, encode
from service.engine.weights import add_in_place, restored_after

Schedule = Literal["fast", "reference"]
Progress = Callable[[int, int, str], None]


class EditCancelled(RuntimeError):
    """The caller asked to stop between layers; the model is unchanged."""


@dataclass(frozen=True)
class CompositionalQuery:
    """A failing two-hop query and the first hop written out (``bridge``)."""

    prompt: str
    hop1_phrase: str
    bridge: str

    def __post_init__(self) -> None:
        for name in ("prompt", "hop1_phrase", "bridge"):
            if not getattr(self, name).strip():
                raise ValueError(f"{name} must not be empty")
        if self._hop1_span() is None:
            raise ValueError(f"hop1_phrase {self.hop1_phrase!r} does not occur in the prompt")

    def _hop1_span(self) -> tuple[int, int] | None:
        return find_phrase(self.prompt, self.hop1_phrase)

    @property
    def guide_prompt(self) -> str:
        """x_g: the prompt with the hop1 phrase replaced by the bridge entity."""
        start, end = self._hop1_span()  # type: ignore[misc]
        bridge = self.bridge[0].upper() + self.bridge[1:] if start == 0 else self.bridge
        return self.prompt[:start] + bridge + self.prompt[end:]


@dataclass(frozen=True)
class LayerReport:
    """Diagnostics of one edited layer: the key norm and how well W K = V* holds after the edit."""

    layer: int
    key_norm: float  # ‖k̄‖, the mean key over templates
    value_shift_norm: float  # ‖v̄* - v̄_c‖
    fit_residual: float  # ‖W' k̄ - v̄*‖ / ‖v̄*‖ after the edit (the mean key, as published)
    template_residual: float  # ‖W' K - V*‖ / ‖V*‖ over every template's key
    rank: int = 1


@dataclass(frozen=True)
class LayerSample:
    """One layer's last-token keys and values over the templates: K [T, d_in], V_c and V* [T, d_out]."""

    layer: int
    keys: torch.Tensor
    values: torch.Tensor
    targets: torch.Tensor


class Solver(Protocol):
    """Turns one layer's sample into rank-k factors (r [d_out, k], u [d_in, k]) with ΔW = r uᵀ."""

    def __call__(self, sample: LayerSample) -> tuple[torch.Tensor, torch.Tensor]: ...


def mean_key_solver(sample: LayerSample) -> tuple[torch.Tensor, torch.Tensor]:
    """The published update: ΔW = (v̄* - v̄_c) k̄ᵀ / ‖k̄‖² over the template means."""
    key = sample.keys.mean(dim=0)
    shift = sample.targets.mean(dim=0) - sample.values.mean(dim=0)
    return (shift / key.dot(key)).unsqueeze(1), key.unsqueeze(1)


@dataclass(frozen=True)
class EditResult:
    delta: EditDelta
    guide_prompt: str
    reports: list[LayerReport] = field(default_factory=list)


def compute_edit(
    lm: LoadedModel,
    query: CompositionalQuery,
    layers: Sequence[int],
    *,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    solver: Solver = mean_key_solver,
    method: str = "creme",
    params: Mapping[str, object] | None = None,
    schedule: Schedule = "fast",
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Compute the delta for ``layers`` on the model as it is now; the model is left unchanged.

    Layers are edited in ascending order, each on the model with the lower layers already edited;
    ``solver`` turns each layer's keys and values into factors (default: the published method).
    ``reference`` runs three full forward passes per layer as published; ``fast`` gives the same
    factors by resuming from cached hidden states and stopping at the edited projection.
    ``method`` and ``params`` are recorded in the delta so the edit can be reproduced.
    """
    layers = check_layers(layers, lm.n_layers)
    if not templates:
        raise ValueError("at least one template is required")
    for template in templates:
        if (problem := template_problem(template)) is not None:
            raise ValueError(f"{problem}: {template!r}")
    batch_c = encode(lm, [t.format(query.prompt) for t in templates])
    batch_g = encode(lm, [t.format(query.guide_prompt) for t in templates])
    steps = _ReferenceSchedule() if schedule == "reference" else _FastSchedule()
    factors: list[LayerFactors] = []
    reports: list[LayerReport] = []
    with restored_after(lm, layers):
        for i, layer in enumerate(layers):
            if should_cancel is not None and should_cancel():
                raise EditCancelled("edit cancelled")
            sample = steps.sample(lm, layer, batch_c, batch_g)
            r, u = (t.float() for t in solver(sample))  # float32 factors whatever the model dtype
            add_in_place(lm, layer, u, r)
            factors.append(LayerFactors(layer=layer, u=u.cpu(), r=r.cpu(), keys=sample.keys.cpu()))
            reports.append(_report(sample, steps.edited_values(lm, layer, batch_c, sample.keys), rank=r.shape[1]))
            if progress is not None:
                progress(i + 1, len(layers), f"edited layer {layer}")
    delta = EditDelta(
        factors=tuple(factors),
        base_fingerprint=lm.fingerprint,
        family=lm.adapter.name,
        method=method,
        params=dict(params or {}),
    )
    return EditResult(delta=delta, guide_prompt=query.guide_prompt, reports=reports)


def _last_token(tensor: torch.Tensor) -> torch.Tensor:
    """The last position of every template, float32: [batch, seq, d] → [batch, d]."""
    return tensor[:, -1].float()


class _ReferenceSchedule:
    """As published: per layer, full passes over x_c and x_g, then a full post-edit pass over x_c."""

    def sample(self, lm: LoadedModel, layer: int, batch_c: Batch, batch_g: Batch) -> LayerSample:
        proj = block_path(lm, layer, lm.adapter.out_proj)
        trace_c = run(lm, batch_c, record_inputs=[proj], record_outputs=[proj])
        trace_g = run(lm, batch_g, record_outputs=[proj])
        return LayerSample(
            layer=layer,
            keys=_last_token(trace_c.inputs[proj]),
            values=_last_token(trace_c.outputs[proj]),
            targets=_last_token(trace_g.outputs[proj]),
        )

    def edited_values(self, lm: LoadedModel, layer: int, batch_c: Batch, keys: torch.Tensor) -> torch.Tensor:
        proj = block_path(lm, layer, lm.adapter.out_proj)
        return _last_token(run(lm, batch_c, record_outputs=[proj]).outputs[proj])


class _FastSchedule:
    """Resumes each layer's pass from the previous edited layer's cached input; never unembeds."""

    def __init__(self) -> None:
        self.previous: tuple[int, torch.Tensor, torch.Tensor] | None = None  # layer, h_c, h_g

    def sample(self, lm: LoadedModel, layer: int, batch_c: Batch, batch_g: Batch) -> LayerSample:
        block, proj = block_path(lm, layer), block_path(lm, layer, lm.adapter.out_proj)
        traces: list[Trace] = []
        for side, batch in enumerate((batch_c, batch_g)):
            resume = None
            if self.previous is not None:
                resume = Resume(layer=self.previous[0], hidden=self.previous[1 + side])
            traces.append(
                run(
                    lm,
                    batch,
                    record_inputs=[block, proj],
                    record_outputs=[proj],
                    stop_after=proj,
                    resume=resume,
                )
            )
        trace_c, trace_g = traces
        self.previous = (layer, trace_c.inputs[block], trace_g.inputs[block])
        return LayerSample(
            layer=layer,
            keys=_last_token(trace_c.inputs[proj]),
            values=_last_token(trace_c.outputs[proj]),
            targets=_last_token(trace_g.outputs[proj]),
        )

    @torch.no_grad()
    def edited_values(self, lm: LoadedModel, layer: int, batch_c: Batch, keys: torch.Tensor) -> torch.Tensor:
        proj = lm.adapter.out_proj_module(lm.model, layer)
        return proj(keys.to(proj.weight.dtype)).float()


def _relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(error.norm() / reference.norm().clamp_min(1e-12))


def _report(sample: LayerSample, edited: torch.Tensor, *, rank: int) -> LayerReport:
    """Fit residuals of the mean key and of every template's key; norms of the template means."""
    mean_target = sample.targets.mean(dim=0)
    return LayerReport(
        layer=sample.layer,
        key_norm=float(sample.keys.mean(dim=0).norm()),
        value_shift_norm=float((mean_target - sample.values.mean(dim=0)).norm()),
        fit_residual=_relative(edited.mean(dim=0) - mean_target, mean_target),
        template_residual=_relative(edited - sample.targets, sample.targets),
        rank=rank,
    )


def default_layers(lm: LoadedModel) -> list[int]:
    """The default edit band of ``lm`` (:func:`~service.engine.inputs.default_band`)."""
    return default_band(lm.name, lm.n_layers)


def fallback_bands(lm: LoadedModel) -> list[list[int]]:
    """The wider bands ``auto`` may fall back to, narrowest first (:func:`~service.engine.inputs.wider_bands`)."""
    return wider_bands(lm.name, lm.n_layers)
