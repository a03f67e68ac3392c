"""``GET /v1/edits/{id}/peft`` and ``POST /v1/edits:import`` through the app, with a real CREME delta of the
embedded model stored as a worker stores one, and a live worker row carrying that model's fingerprint.

The downloaded adapter is loaded with the real ``peft`` onto a fresh copy of the base model."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from transformers import AutoModelForCausalLM

from service.db import Edit, StoredDelta, Worker
from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.delta import EditDelta
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, resolve_model_dir
from service.engine.weights import WeightState
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.api.support import EDIT_BODY, add_worker, snapshot
from tests.api.support import compute_edit as store_fake_delta
from tests.fixtures.app import api_settings
from tests.fixtures.models import cache_dir
from tests.support import assert_problem

QUERY = {
    "prompt": "The capital of the country that Daisuke Sasaki is a citizen of is",
    "hop1_phrase": "the country that Daisuke Sasaki is a citizen of",
    "bridge": "Japan",
    "answer": "Tokyo",
    "answer_aliases": [],
}
LAYERS = [12, 13]
OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def settings() -> Settings:
    """The API tests' limits, with room for a delta of two layers and their keys (~110 kB) in a body."""
    return api_settings(max_body_bytes=1_000_000, max_wait_seconds=3.0, worker_lease_seconds=30.0)


@pytest.fixture(scope="module")
def delta(smol: LoadedModel) -> EditDelta:
    """A real CREME edit of the embedded model at layers 12 and 13, recording its query as a worker's does."""
    query = CompositionalQuery(QUERY["prompt"], QUERY["hop1_phrase"], QUERY["bridge"])
    return compute_edit(smol, query, LAYERS, params={"query": QUERY}).delta


@pytest.fixture
def stored(client: TestClient, factory: sessionmaker[Session], delta: EditDelta) -> Iterator[str]:
    """A submitted edit made ``computed`` with ``delta`` stored, as a worker leaves it; its id."""
    response = client.post("/v1/edits", json={**EDIT_BODY})
    assert response.status_code == 202, response.text
    edit_id = response.json()["id"]
    data = delta.to_bytes()
    with factory() as session:
        session.execute(
            update(Edit)
            .where(Edit.id == edit_id)
            .values(status="computed", layers=LAYERS, base_fingerprint=delta.base_fingerprint, computed_on_version=0)
        )
        sha256 = hashlib.sha256(data).hexdigest()
        session.add(StoredDelta(edit_id=edit_id, data=data, sha256=sha256, shapes=delta.shapes()))
        session.commit()
    yield edit_id


def live_worker(factory: sessionmaker[Session], fingerprint: str, n_layers: int = 30) -> None:
    """A worker heard from just now, serving the model with ``fingerprint``."""
    add_worker(factory, "worker-1", version=0, n_layers=n_layers)
    with factory() as session:
        session.execute(update(Worker).where(Worker.id == "worker-1").values(model_fingerprint=fingerprint))
        session.commit()


def test_peft_archive_holds_the_adapter(
    client: TestClient, stored: str, delta: EditDelta, smol: LoadedModel, tmp_path: Path
) -> None:
    response = client.get(f"/v1/edits/{stored}/peft")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f'attachment; filename="edit-{stored}-peft.zip"'
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    config = json.loads(files["adapter_config.json"])
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 1
    assert config["target_modules"] == ["o_proj"] and config["layers_to_transform"] == LAYERS
    assert config["base_model_name_or_path"] == "embedded:smollm2-135m-instruct" and config["rank_pattern"] == {}
    tensors = load_safetensors(files["adapter_model.safetensors"])
    for f in delta.factors:
        name = f"base_model.model.model.layers.{f.layer}.self_attn.o_proj"
        assert torch.equal(tensors[f"{name}.lora_A.weight"], f.u.T)  # [1, 576] = uᵀ
        assert torch.equal(tensors[f"{name}.lora_B.weight"], f.r)  # [576, 1] = r
    assert len(tensors) == 2 * len(LAYERS)

    as_tar = client.get(f"/v1/edits/{stored}/peft", params={"format": "tar"})
    assert as_tar.status_code == 200 and as_tar.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(as_tar.content)) as archive:
        assert {m.name: archive.extractfile(m).read() for m in archive.getmembers()} == files  # type: ignore[union-attr]
    assert client.get(f"/v1/edits/{stored}/peft").content == response.content  # the same bytes every time

    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        archive.extractall(tmp_path / "adapter")
    fresh = AutoModelForCausalLM.from_pretrained(resolve_model_dir(EMBEDDED_MODEL, cache_dir()), dtype=torch.float32)
    merged = PeftModel.from_pretrained(fresh.eval(), str(tmp_path / "adapter")).merge_and_unload()
    ids = smol.tokenizer(QUERY["prompt"], return_tensors="pt")
    weights = WeightState(smol)
    weights.set_active([(stored, delta)])
    try:
        with torch.no_grad():
            diff = (merged(**ids).logits - smol.model(**ids).logits).abs().max()
    finally:
        weights.set_active([])
    assert float(diff) <= 1e-5  # measured: 0.0 (peft's merged weights are WeightState's, bit for bit)


def test_peft_archive_refusals(client: TestClient, factory: sessionmaker[Session], stored: str) -> None:
    assert_problem(client.get("/v1/edits/no-such-edit/peft"), 404, "not-found")
    pending = client.post("/v1/edits", json={**EDIT_BODY, "answer": "Kyoto"}).json()["id"]
    assert "pending" in assert_problem(client.get(f"/v1/edits/{pending}/peft"), 409, "conflict")["detail"]
    assert_problem(client.get(f"/v1/edits/{stored}/peft", params={"format": "rar"}), 422, "validation")
    with factory() as session:
        session.execute(update(Edit).where(Edit.id == pending).values(status="computed"))
        session.commit()
    assert "no delta" in assert_problem(client.get(f"/v1/edits/{pending}/peft"), 404, "not-found")["detail"]
    faked = client.post("/v1/edits", json={**EDIT_BODY, "answer": "Osaka"}).json()["id"]
    store_fake_delta(factory, faked)  # bytes that match their sha256 but are no safetensors file
    assert_problem(client.get(f"/v1/edits/{faked}/peft"), 500, "delta-corrupt")


def test_import_round_trip_then_apply(
    client: TestClient, factory: sessionmaker[Session], stored: str, delta: EditDelta
) -> None:
    live_worker(factory, delta.base_fingerprint)
    exported = client.get(f"/v1/edits/{stored}/delta").content
    response = client.post("/v1/edits:import", content=exported, headers=OCTETS)
    assert response.status_code == 201, response.text
    edit = response.json()
    assert response.headers["location"] == f"/v1/edits/{edit['id']}" and edit["id"] != stored
    assert edit["status"] == "computed" and edit["layers"] == LAYERS and edit["method"] == "creme"
    assert (edit["prompt"], edit["hop1_phrase"], edit["bridge"], edit["answer"]) == (
        QUERY["prompt"], QUERY["hop1_phrase"], "Japan", "Tokyo",
    )  # fmt: skip
    assert edit["base_fingerprint"] == delta.base_fingerprint and edit["apply"] == "never"
    assert set(edit["delta_norms"]) == {"12", "13"} and edit["history"] == []
    served = client.get(f"/v1/edits/{edit['id']}/delta")
    assert served.content == exported and served.headers["etag"] == f'"{hashlib.sha256(exported).hexdigest()}"'
    with factory() as session:
        row = session.get(Edit, edit["id"])
        assert row is not None and row.request["imported"]["source_sha256"] == hashlib.sha256(exported).hexdigest()

    version = client.get("/v1/model").json()["state_version"]
    applied = client.post(f"/v1/edits/{edit['id']}/apply")
    assert applied.status_code == 200, applied.text
    assert applied.json()["state"] == {"version": version + 1, "active_edits": [edit["id"]]}
    model = client.get("/v1/model").json()
    assert model["state_version"] == version + 1 and model["active_edits"] == [edit["id"]]


def test_import_refusals_store_nothing(
    client: TestClient, factory: sessionmaker[Session], queue: InProcessQueue, delta: EditDelta
) -> None:
    data = delta.to_bytes()
    before = snapshot(factory, queue)
    body = assert_problem(client.post("/v1/edits:import", content=data, headers=OCTETS), 503, "model-unavailable")
    assert "no model is served" in body["detail"]  # nothing to check the fingerprint against
    live_worker(factory, "0" * 32, n_layers=30)
    before = snapshot(factory, queue)

    mismatch = assert_problem(
        client.post("/v1/edits:import", content=data, headers=OCTETS), 422, "fingerprint-mismatch"
    )
    assert mismatch["delta_fingerprint"] == delta.base_fingerprint and mismatch["model_fingerprint"] == "0" * 32
    assert delta.base_fingerprint in mismatch["detail"] and "0" * 32 in mismatch["detail"]
    for garbage in (b"", b"not a safetensors file", data[: len(data) // 2]):
        assert_problem(client.post("/v1/edits:import", content=garbage, headers=OCTETS), 422, "invalid-delta")
    shallow = EditDelta(delta.factors, delta.base_fingerprint, "llama", method="rome").to_bytes()
    assert "rome" in assert_problem(client.post("/v1/edits:import", content=shallow, headers=OCTETS), 422)["detail"]
    as_json = client.post("/v1/edits:import", content=data, headers={"Content-Type": "application/json"})
    assert_problem(as_json, 415, "unsupported-media-type")
    assert snapshot(factory, queue) == before

    with factory() as session:  # the live worker's model is only 12 layers deep: layers 12 and 13 are outside it
        session.execute(update(Worker).values(model_fingerprint=delta.base_fingerprint, n_layers=12))
        session.commit()
    before = snapshot(factory, queue)
    outside = assert_problem(client.post("/v1/edits:import", content=data, headers=OCTETS), 422, "invalid-delta")
    assert "layer 12 is outside 0..11" in outside["detail"]
    assert snapshot(factory, queue) == before


def test_routes_do_not_collide_with_the_edits_router(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "get" in paths["/v1/edits/{edit_id}/peft"] and "post" in paths["/v1/edits:import"]
    assert "application/octet-stream" in paths["/v1/edits:import"]["post"]["requestBody"]["content"]
    assert_problem(client.get("/v1/edits/peft"), 404, "not-found")  # an edit called "peft", not the route
