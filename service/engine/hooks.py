"""Forward passes with recording, patching, early stop and resume — hooks always removed on exit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import torch
from torch import nn

from service.engine.inputs import check_layers
from service.engine.loading import LoadedModel
from service.engine.prompts import Batch

OutputEdit = Callable[[torch.Tensor], torch.Tensor]


class _ForwardStopped(Exception):
    """Raised inside a hook to end a forward pass once everything needed is recorded."""


class _Passthrough(nn.Module):
    """Stands in for a skipped block: returns its hidden-state input unchanged."""

    def forward(self, hidden_states: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return hidden_states


@dataclass(frozen=True)
class Resume:
    """Start the forward pass at block ``layer`` from cached ``hidden`` ([batch, seq, d_model])."""

    layer: int
    hidden: torch.Tensor


@dataclass
class Trace:
    """What one forward pass recorded, keyed by module path relative to the model."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None  # [batch, seq, vocab], None when the pass stopped early


def _first(output: object) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def _replace_first(output: object, value: torch.Tensor) -> object:
    return (value, *output[1:]) if isinstance(output, tuple) else value


@contextmanager
def attached(
    forward_hooks: Sequence[tuple[nn.Module, Callable]] = (),
    pre_hooks: Sequence[tuple[nn.Module, Callable]] = (),
) -> Iterator[None]:
    """Register hooks for the duration of the block; they are removed even if the pass raises."""
    handles = []
    try:
        for module, fn in forward_hooks:
            handles.append(module.register_forward_hook(fn))
        for module, fn in pre_hooks:
            handles.append(module.register_forward_pre_hook(fn, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _resumed(lm: LoadedModel, resume: Resume | None) -> Iterator[list[tuple[nn.Module, Callable]]]:
    """Swap the blocks below ``resume.layer`` for passthroughs; yield the pre-hook injecting the cache."""
    if resume is None:
        yield []
        return
    blocks = lm.adapter.block_list(lm.model)
    originals = [blocks[i] for i in range(resume.layer)]

    def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (resume.hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resume.hidden}

    try:
        for i in range(resume.layer):
            blocks[i] = _Passthrough()
        yield [(blocks[resume.layer], inject)]
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


@torch.no_grad()
def run(
    lm: LoadedModel,
    batch: Batch,
    *,
    record_inputs: Sequence[str] = (),
    record_outputs: Sequence[str] = (),
    edit_outputs: Mapping[str, OutputEdit] | None = None,
    stop_after: str | None = None,
    resume: Resume | None = None,
) -> Trace:
    """One forward pass of ``batch`` that records module inputs/outputs and may patch outputs.

    Modules are named by their path in ``lm.model``. ``stop_after`` ends the pass right after that
    module ran (no logits then). ``resume`` skips the blocks below a layer using cached hidden states.
    The model is never left modified: every hook and block swap is undone before returning.
    """
    trace = Trace()
    edits = dict(edit_outputs or {})
    forward_hooks: list[tuple[nn.Module, Callable]] = []
    pre_hooks: list[tuple[nn.Module, Callable]] = []

    def make_forward_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: object) -> object:
            if name in edits:
                output = _replace_first(output, edits[name](_first(output)))
            if name in record_outputs:
                trace.outputs[name] = _first(output).detach()
            if name == stop_after:
                raise _ForwardStopped
            return output

        return hook

    def make_input_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            trace.inputs[name] = (args[0] if args else next(iter(kwargs.values()))).detach()

        return hook

    for name in {*record_outputs, *edits, *([stop_after] if stop_after else [])}:
        forward_hooks.append((lm.model.get_submodule(name), make_forward_hook(name)))
    for name in record_inputs:
        pre_hooks.append((lm.model.get_submodule(name), make_input_hook(name)))

    with (
        _resumed(lm, resume) as resume_hooks,
        attached(forward_hooks, [*resume_hooks, *pre_hooks]),
        suppress(_ForwardStopped),
    ):
        trace.logits = lm.model(**batch.model_inputs(), use_cache=False).logits
    return trace


def block_path(lm: LoadedModel, layer: int, sub: str | None = None) -> str:
    """Module path of block ``layer`` or of ``sub`` inside it (e.g. the adapter's ``out_proj``)."""
    path = f"{lm.adapter.blocks}.{layer}"
    return f"{path}.{sub}" if sub else path


def select_layers(lm: LoadedModel, layers: Sequence[int] | None) -> list[int]:
    """``layers`` sorted, without repeats (all when None); ValueError unless a non-empty subset of the model's."""
    return list(range(lm.n_layers)) if layers is None else check_layers(layers, lm.n_layers)


def resume_from(lm: LoadedModel, trace: Trace, layer: int, rows: int) -> Resume | None:
    """Resume at block ``layer`` from row 0 of ``trace``'s output of the block below, ``rows`` times; None at 0.

    ``trace`` must have recorded that block's output (``record_outputs``).
    """
    if layer == 0:
        return None
    return Resume(layer=layer, hidden=trace.outputs[block_path(lm, layer - 1)][:1].expand(rows, -1, -1))
