"""CREME: the closed-form rank-one edit of middle-layer attention output projections (CREME.md)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from service.engine.delta import EditDelta, LayerFactors
from service.engine.hooks import Resume, Trace, block_path, run
from service.engine.loading import LoadedModel
from service.engine.prompts import Batch, encode
from service.engine.weights import add_in_place, restored_after
from service.settings import EMBEDDED_MODEL

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "{}", "Human: {}", "User: {}", "Hello world. {}", "I love China! {}",
    "I am an AI assistant. {}", "How about the weather today? {}", "The cat sat on the mat. {}",
    "I went to the store today. {}", "The sun shines brightly in summer. {}",
    "He loves to play the guitar. {}", "She smiled and waved goodbye. {}",
    "用户：{}", "你好，世界。{}", "我爱中国！{}", "我是一个人工智能助手。{}", "今天的天气怎么样？{}",
    "猫坐在垫子上。{}", "我今天去了商店。{}", "夏天太阳很刺眼。{}", "他喜欢弹吉他。{}", "她微笑着挥手道别。{}",
)  # fmt: skip

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
        match = re.search(re.escape(self.hop1_phrase), self.prompt, flags=re.IGNORECASE)
        return match.span() if match else None

    @property
    def guide_prompt(self) -> str:
        """x_g: the prompt with the hop1 phrase replaced by the bridge entity."""
        start, end = self._hop1_span()  # type: ignore[misc]
        bridge = self.bridge[0].upper() + self.bridge[1:] if start == 0 else self.bridge
        return self.prompt[:start] + bridge + self.prompt[end:]


@dataclass(frozen=True)
class LayerReport:
    """Diagnostics of one edited layer: the key norm and how well W k̄ = v̄* holds after the edit."""

    layer: int
    key_norm: float
    value_shift_norm: float  # ‖v̄* − v̄_c‖
    fit_residual: float  # ‖W' k̄ − v̄*‖ / ‖v̄*‖ after the edit


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
    schedule: Schedule = "fast",
    progress: Progress | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> EditResult:
    """Compute the CREME delta for ``layers`` on the model as it is now; the model is left unchanged.

    Layers are edited in ascending order, each on the model with the lower layers already edited.
    ``reference`` runs three full forward passes per layer as published; ``fast`` gives the same
    factors by resuming from cached hidden states and stopping at the edited projection.
    """
    layers = sorted(set(layers))
    _check_layers(lm, layers)
    if not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError("every template must contain exactly one '{}'")
    batch_c = encode(lm, [t.format(query.prompt) for t in templates])
    batch_g = encode(lm, [t.format(query.guide_prompt) for t in templates])
    steps = _ReferenceSchedule() if schedule == "reference" else _FastSchedule()
    factors: list[LayerFactors] = []
    reports: list[LayerReport] = []
    with restored_after(lm, layers):
        for i, layer in enumerate(layers):
            if should_cancel is not None and should_cancel():
                raise EditCancelled("edit cancelled")
            key, value_c, value_star = steps.values(lm, layer, batch_c, batch_g)
            u, r = key.float(), (value_star.float() - value_c.float()) / key.float().dot(key.float())
            add_in_place(lm, layer, u, r)
            factors.append(LayerFactors(layer=layer, u=u.cpu(), r=r.cpu()))
            edited = steps.edited_value(lm, layer, batch_c, key)
            reports.append(_report(layer, key, value_c, value_star, edited))
            if progress is not None:
                progress(i + 1, len(layers), f"edited layer {layer}")
    delta = EditDelta(factors=tuple(factors), base_fingerprint=lm.fingerprint, family=lm.adapter.name)
    return EditResult(delta=delta, guide_prompt=query.guide_prompt, reports=reports)


def _check_layers(lm: LoadedModel, layers: Sequence[int]) -> None:
    if not layers:
        raise ValueError("at least one layer is required")
    bad = [layer for layer in layers if not 0 <= layer < lm.n_layers]
    if bad:
        raise ValueError(f"layers {bad} are outside 0..{lm.n_layers - 1}")


def _last_token_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over templates of the last position: [batch, seq, d] → [d]."""
    return tensor[:, -1].float().mean(dim=0)


class _ReferenceSchedule:
    """As published: per layer, full passes over x_c and x_g, then a full post-edit pass over x_c."""

    def values(
        self, lm: LoadedModel, layer: int, batch_c: Batch, batch_g: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        proj = block_path(lm, layer, lm.adapter.out_proj)
        trace_c = run(lm, batch_c, record_inputs=[proj], record_outputs=[proj])
        trace_g = run(lm, batch_g, record_outputs=[proj])
        return (
            _last_token_mean(trace_c.inputs[proj]),
            _last_token_mean(trace_c.outputs[proj]),
            _last_token_mean(trace_g.outputs[proj]),
        )

    def edited_value(self, lm: LoadedModel, layer: int, batch_c: Batch, key: torch.Tensor) -> torch.Tensor:
        proj = block_path(lm, layer, lm.adapter.out_proj)
        return _last_token_mean(run(lm, batch_c, record_outputs=[proj]).outputs[proj])


class _FastSchedule:
    """Resumes each layer's pass from the previous edited layer's cached input; never unembeds."""

    def __init__(self) -> None:
        self.previous: tuple[int, torch.Tensor, torch.Tensor] | None = None  # layer, h_c, h_g

    def values(
        self, lm: LoadedModel, layer: int, batch_c: Batch, batch_g: Batch
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
        return (
            _last_token_mean(trace_c.inputs[proj]),
            _last_token_mean(trace_c.outputs[proj]),
            _last_token_mean(trace_g.outputs[proj]),
        )

    @torch.no_grad()
    def edited_value(self, lm: LoadedModel, layer: int, batch_c: Batch, key: torch.Tensor) -> torch.Tensor:
        proj = lm.adapter.out_proj_module(lm.model, layer)
        return proj(key.to(proj.weight.dtype).unsqueeze(0)).squeeze(0).float()


def _report(
    layer: int, key: torch.Tensor, value_c: torch.Tensor, value_star: torch.Tensor, edited: torch.Tensor
) -> LayerReport:
    value_star = value_star.float()
    residual = (edited.float() - value_star).norm() / value_star.norm().clamp_min(1e-12)
    return LayerReport(
        layer=layer,
        key_norm=float(key.norm()),
        value_shift_norm=float((value_star - value_c.float()).norm()),
        fit_residual=float(residual),
    )


EMBEDDED_DEFAULT_LAYERS = tuple(range(10, 21))  # measured on the embedded SmolLM2-135M: see README


def default_layers(lm: LoadedModel) -> list[int]:
    """The default edit band: measured for the embedded model; else the published 17-23 of 32, scaled."""
    if lm.name == EMBEDDED_MODEL and lm.n_layers == 30:
        return list(EMBEDDED_DEFAULT_LAYERS)
    n = lm.n_layers
    start, stop = round(n * 17 / 32), round(n * 23 / 32)
    return list(range(min(start, n - 1), min(max(stop, start), n - 1) + 1))
