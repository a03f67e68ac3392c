"""Only safetensors is ever deserialized: no pickle-capable loader in the code, and no pickle checkpoint loads."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path
from typing import Any

import pytest

from service.engine import loading
from service.engine.loading import ModelLoadError, load_model

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("service", "api", "workers", "migrations")
PICKLE_MODULES = {"pickle", "_pickle", "cPickle", "dill", "joblib", "shelve", "marshal", "cloudpickle"}
UNSAFE_KEYWORDS = {("weights_only", False), ("trust_remote_code", True), ("allow_pickle", True)}


def _dotted(node: ast.AST) -> str:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def unsafe_uses(source: str) -> list[str]:
    """Every pickle-capable loader, pickle module or unsafe loading flag in ``source``, with its line."""
    tree = ast.parse(source)
    torch_names = {"torch"} | {
        a.asname for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.name == "torch" and a.asname
    }
    found: list[str] = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{line}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            if root in PICKLE_MODULES or (root == "torch" and any(a.name == "load" for a in node.names)):
                found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            root = dotted.split(".")[0]
            if (root in torch_names and dotted.endswith(".load")) or root in PICKLE_MODULES:
                found.append(f"{line}: {dotted}")
        elif isinstance(node, ast.Name) and node.id in PICKLE_MODULES:
            found.append(f"{line}: {node.id}")
        elif isinstance(node, ast.keyword) and node.arg and isinstance(node.value, ast.Constant):
            if (node.arg, node.value.value) in UNSAFE_KEYWORDS:
                found.append(f"{line}: {node.arg}={node.value.value}")
        elif isinstance(node, ast.Constant) and node.value in PICKLE_MODULES:
            found.append(f"{line}: {node.value!r}")  # e.g. importlib.import_module("pickle")
    return sorted(set(found))


def test_no_pickle_capable_loading_in_the_code() -> None:
    files = [path for top in SCANNED for path in sorted((REPO / top).rglob("*.py"))]
    assert len(files) > 20
    offenders = {
        str(path.relative_to(REPO)): uses
        for path in files
        if path != Path(__file__).resolve() and (uses := unsafe_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}


@pytest.mark.parametrize(
    "snippet",
    [
        "import torch\ntorch.load('x.pt')",
        "import torch\ntorch.load('x.pt', weights_only=True)",
        "from torch import load",
        "import torch as t\nt.jit.load('m')",
        "import torch\ntorch.serialization.load('m')",
        "import pickle",
        "import pickle as p",
        "from pickle import loads",
        "import joblib",
        "import dill",
        "import importlib\nimportlib.import_module('pickle')",
        "f(weights_only=False)",
        "AutoModel.from_pretrained('d', trust_remote_code=True)",
        "numpy.load('a.npy', allow_pickle=True)",
    ],
)
def test_the_scan_finds_unsafe_loading(snippet: str) -> None:
    assert unsafe_uses(snippet), snippet


def test_the_scan_ignores_safe_code_and_prose() -> None:
    safe = (
        '"""pickle checkpoints are never read; torch.load is not used."""\n'
        "import json\nfrom safetensors.torch import load, load_file\n"
        "json.load(f)\nload_file('x.safetensors')\nf(weights_only=True, trust_remote_code=False)\n"
        "# import pickle\n"
    )
    assert unsafe_uses(safe) == []


class _Trap:
    """Unpickling this creates ``path``: proof that a pickle was deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickle_checkpoint(directory: Path, marker: Path) -> None:
    directory.mkdir()
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(directory)
    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(marker)))


def _tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(directory)


def test_a_trap_pickle_really_fires(tmp_path: Path) -> None:
    """The trap works: unpickling the checkpoint would create the marker."""
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(_Trap(marker)))
    assert marker.exists()


def test_a_pickle_only_checkpoint_is_refused_without_unpickling(tmp_path: Path) -> None:
    model_dir, marker = tmp_path / "model", tmp_path / "unpickled"
    _pickle_checkpoint(model_dir, marker)
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        load_model(str(model_dir), cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_from_pretrained_is_told_to_use_safetensors_only(tmp_path: Path) -> None:
    """Even beside some other *.safetensors file, the pickle checkpoint is not read."""
    model_dir, marker = tmp_path / "model", tmp_path / "unpickled"
    _pickle_checkpoint(model_dir, marker)
    _tokenizer(model_dir)
    (model_dir / "unrelated.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match="safetensors"):  # transformers: no model.safetensors, not "try the .bin"
        load_model(str(model_dir), cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_load_model_passes_use_safetensors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir, marker = tmp_path / "model", tmp_path / "unpickled"
    _pickle_checkpoint(model_dir, marker)
    _tokenizer(model_dir)
    (model_dir / "model.safetensors").write_bytes(b"")
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def spy(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(Stop):
        load_model(str(model_dir), cache_dir=tmp_path / "cache")
    assert seen.get("use_safetensors") is True
    assert not seen.get("trust_remote_code")
