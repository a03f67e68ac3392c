"""The CREME engine: load a model, find why it fails a two-hop question, and patch its weights.

The public names (``__all__``, by module in ``_MODULES``) are imported on first use, so importing
``service.engine`` stays cheap: the gateway checks requests with the torch-free modules (``inputs``,
``options``, ``judging``) and never loads torch. The engine imports nothing from the rest of ``service``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_MODULES: dict[str, tuple[str, ...]] = {
    "cases": ("CaseFormatError", "TwoHopCase", "load_cases"),
    "compositionality": ("GapReport", "check_cases"),
    "context": ("EditContext",),
    "creme": ("CompositionalQuery", "EditCancelled", "EditResult", "compute_edit", "default_layers", "fallback_bands"),
    "delta": ("EditDelta", "InvalidDeltaError", "LayerFactors", "delta_from_bytes", "validate_for"),
    "evaluate": ("PARAPHRASE_FRAME", "EvalSets", "Probe", "evaluate_edit"),
    "inputs": ("EMBEDDED_MODEL", "check_layers", "default_band", "find_phrase", "wider_band", "wider_bands"),
    "intervene": ("InterventionResult", "intervene"),
    "judging": ("DEFAULT_RULE", "JUDGE_RULES", "JudgeRule", "is_correct"),
    "lens": ("LensResult", "format_lens_table", "logit_lens"),
    "loading": ("LoadedModel", "ModelLoadError", "load_model", "load_tokenizer"),
    "locate": ("LocateResult", "locate"),
    "methods": ("MethodSpec", "compute_with", "method_spec"),
    "options": ("APPLY_POLICIES", "DEFAULT_APPLY", "DEFAULT_METHOD", "METHODS", "TEMPLATE_SETS"),
    "prompts": ("answer_probs", "greedy"),
    "safety": ("Canary", "SafetyReport", "check_safety"),
    "weights": ("WeightState",),
}
_SOURCE = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_SOURCE)


def __getattr__(name: str) -> Any:
    module = _SOURCE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
