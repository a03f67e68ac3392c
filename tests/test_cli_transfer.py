"""``creme export --merged`` and ``creme import`` (``main()`` with argv), and the client's ``import_delta`` and
``peft``, against a real service on a loopback port (tests/support/live.py) with a worker on the embedded model.

The merged model is loaded back with plain ``transformers`` and compared with the worker's own model.
"""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from creme.client import AsyncClient, Client, Edit, Invalid
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import resolve_model_dir
from service.settings import get_settings
from tests.fixtures.cli import Creme
from tests.fixtures.models import cache_dir
from tests.support.live import LiveService, live_service

pytestmark = pytest.mark.slow

PROMPT = "The capital of the country that Daisuke Sasaki is a citizen of is"
HOP1 = "the country that Daisuke Sasaki is a citizen of"
PROMPTS = [PROMPT, "The capital of Japan is", "Hello world, my name is"]
LAYERS = [12, 13]
TOLERANCE = 1e-5  # float32 logits; measured: 0.0 (the same weights, bit for bit)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("cli-transfer"), key_scopes=("edit",)) as live:
        yield live


@pytest.fixture(autouse=True)
def remote(service: LiveService, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The commands' URL and key, and settings read afresh from this environment (the model the worker has)."""
    monkeypatch.setenv("CREME_URL", service.url)
    monkeypatch.setenv("CREME_API_KEY", service.keys["edit"])
    monkeypatch.setenv("CREME_CACHE_DIR", str(cache_dir()))
    for name in ("CREME_MODEL", "CREME_DTYPE", "CREME_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def client(service: LiveService) -> Iterator[Client]:
    with Client(service.url, api_key=service.keys["edit"]) as c:
        yield c


@pytest.fixture(scope="module")
def applied(client: Client) -> Edit:
    """A CREME edit computed and applied by the service's worker."""
    edit = client.edit(PROMPT, HOP1, "Japan", "Tokyo", layers=LAYERS, method="creme", apply="always", wait=300)
    assert edit.status == "applied", edit.error
    return edit


def logits(model: torch.nn.Module, tokenizer: object) -> list[torch.Tensor]:
    out = []
    for prompt in PROMPTS:
        with torch.no_grad():
            out.append(model(**tokenizer(prompt, return_tensors="pt")).logits.float())  # type: ignore[operator]
    return out


def record(folder: Path) -> dict:
    return json.loads((folder / "creme_merged.json").read_text())


def o_proj(folder: Path, layer: int) -> torch.Tensor:
    with safe_open(folder / "model.safetensors", framework="pt") as weights:
        return weights.get_tensor(f"model.layers.{layer}.self_attn.o_proj.weight")


def test_export_merges_the_active_edits(
    creme: Creme, service: LiveService, client: Client, applied: Edit, tmp_path: Path
) -> None:
    assert service.worker is not None
    served = service.worker.weights
    assert served.active_ids == [applied.id]
    code, out, err = creme("export", "--merged", str(tmp_path / "active"))
    assert code == 0, err
    assert out.startswith("wrote ") and out.rstrip().endswith(f"edits merged: {applied.id}")

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "active")  # plain transformers, nothing of ours
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "active")
    assert model.dtype == torch.float32
    exported = logits(model.eval(), tokenizer)
    expected = logits(served.lm.model, served.lm.tokenizer)
    diff = max(float((a - b).abs().max()) for a, b in zip(exported, expected, strict=True))
    assert diff <= TOLERANCE, diff
    written = record(tmp_path / "active")
    assert [e["id"] for e in written["edits"]] == [applied.id]
    assert written["weights_checksum"] == served.checksum()
    assert written["base_fingerprint"] == served.lm.fingerprint == written["service_state"]["fingerprint"]
    pristine = resolve_model_dir(EMBEDDED_MODEL, cache_dir())
    assert not torch.equal(o_proj(tmp_path / "active", 12), o_proj(pristine, 12))
    assert torch.equal(o_proj(tmp_path / "active", 11), o_proj(pristine, 11))

    client.revert(applied.id)
    try:
        code, out, err = creme("export", "--merged", str(tmp_path / "none"))  # no edit active: the base model
        assert code == 0, err
        assert record(tmp_path / "none")["edits"] == []
        assert torch.equal(o_proj(tmp_path / "none", 12), o_proj(pristine, 12))
        code, out, err = creme("export", "--merged", str(tmp_path / "named"), "--edit", applied.id)
        assert code == 0, err
        assert [e["id"] for e in record(tmp_path / "named")["edits"]] == [applied.id]
        assert record(tmp_path / "named")["weights_checksum"] == written["weights_checksum"]
    finally:
        client.apply(applied.id)


def test_export_refusals(creme: Creme, applied: Edit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "something").write_text("x")
    code, out, err = creme("export", "--merged", str(tmp_path / "full"))
    assert code == 2 and not out and "is not an empty directory" in err

    code, out, err = creme("export", "--merged", str(tmp_path / "x"), "--edit", "no-such-edit")
    assert code == 1 and not out and err.startswith("creme export: 404 ") and err.count("\n") == 1

    monkeypatch.setenv("CREME_DTYPE", "bfloat16")  # another base model: its fingerprint differs
    get_settings.cache_clear()
    code, out, err = creme("export", "--merged", str(tmp_path / "bf16"), "--edit", applied.id)
    assert code == 1 and not out
    line = err.splitlines()[-1]
    assert line.startswith(f"creme export: edit {applied.id} was computed on base model ") and "CREME_MODEL" in line
    assert not (tmp_path / "bf16").exists()


def test_import_command(creme: Creme, client: Client, applied: Edit, tmp_path: Path) -> None:
    delta_file = tmp_path / "edit.safetensors"
    delta_file.write_bytes(client.delta(applied.id))
    version = client.model().state_version
    code, out, err = creme("import", str(delta_file), "--apply")
    assert code == 0, err
    first, second = out.splitlines()
    new_id = first.split()[0]
    assert first == f"{new_id} computed; layers 12,13; method creme; from {delta_file}"
    assert second.startswith(f"{new_id} applied; model state version {version + 1}; active edits: ")
    assert new_id in client.model().active_edits and client.edit_by_id(new_id).prompt == PROMPT
    client.revert(new_id)

    (tmp_path / "junk").write_bytes(b"not a delta")
    code, out, err = creme("import", str(tmp_path / "junk"))
    assert code == 1 and not out and err.startswith("creme import: 422 Invalid delta: ") and err.count("\n") == 1
    code, out, err = creme("import", str(tmp_path / "missing"))
    assert code == 2 and "cannot read" in err


def test_client_import_delta_and_peft(service: LiveService, client: Client, applied: Edit) -> None:
    data = client.delta(applied.id)
    imported = client.import_delta(data)
    assert imported.status == "computed" and imported.layers == LAYERS and imported.method == "creme"
    with pytest.raises(Invalid) as invalid:
        client.import_delta(b"junk")
    assert invalid.value.type.endswith("/invalid-delta")
    with zipfile.ZipFile(io.BytesIO(client.peft(applied.id))) as archive:
        assert sorted(archive.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]

    async def scenario() -> None:
        async with AsyncClient(service.url, api_key=service.keys["edit"]) as aclient:
            again = await aclient.import_delta(data)
            assert again.status == "computed" and again.id != imported.id
            assert (await aclient.peft(again.id, fmt="tar"))[257:262] == b"ustar"  # a tar archive

    asyncio.run(scenario())
