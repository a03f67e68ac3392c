"""Two base models served at once: one gateway, one Postgres database, one Redis, a worker for each model.

The embedded SmolLM2 and a tiny random LLaMA saved to a temporary directory. Requests name their
model; each model's jobs go to its own Redis stream and its own worker; an edit of one model never
touches the other's state or weights; validation uses the named model's depth and tokenizer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from service.db import Job, make_engine, make_session_factory
from service.db.migrate import upgrade
from service.engine.inputs import EMBEDDED_MODEL
from service.engine.loading import LoadedModel, load_model
from service.jobs.redis_queue import RedisQueue
from tests.fixtures.app import api_settings
from tests.fixtures.db import reset_postgres
from tests.fixtures.models import cache_dir, tiny_llama_config
from tests.support import assert_problem, wait_for
from workers.worker import Worker

pytestmark = [pytest.mark.redis, pytest.mark.postgres]

PROMPT = "The capital of the country where Mount Fuji is located is"
HOP1 = "the country where Mount Fuji is located"


@dataclass
class Served:
    client: TestClient
    factory: sessionmaker[Session]
    gateway_queue: RedisQueue
    prefix: str
    tiny: LoadedModel
    workers: dict[str, Worker]  # by model name


def _save_tiny_llama(smol: LoadedModel, directory: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_llama_config(len(smol.tokenizer)), dtype=torch.float32)
    model.save_pretrained(directory)
    smol.tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def served(
    postgres_url: str, redis_url: str, smol: LoadedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    reset_postgres(postgres_url)
    upgrade(postgres_url)
    tiny = load_model(_save_tiny_llama(smol, tmp_path_factory.mktemp("tiny-llama")), cache_dir=cache_dir())
    engine = make_engine(postgres_url)
    factory = make_session_factory(engine)
    prefix = f"creme-test-models:{uuid.uuid4().hex}"
    queues = [RedisQueue(redis_url, stream=f"{prefix}:jobs", nudge_channel=f"{prefix}:nudge") for _ in range(3)]
    settings = api_settings(
        database_url=postgres_url, heartbeat_seconds=0.2, worker_lease_seconds=5.0, reconcile_seconds=0.5
    )
    workers = {
        lm.name: Worker(settings.model_copy(update={"worker_id": wid}), lm, factory, queue, poll_seconds=0.1)
        for lm, wid, queue in ((smol, "w-smol", queues[1]), (tiny, "w-tiny", queues[2]))
    }
    for worker in workers.values():
        worker.start()
    try:
        for worker in workers.values():
            assert worker.ready.wait(60), f"worker {worker.worker_id} did not become ready"
        app = create_app(
            settings, session_factory=factory, queue=queues[0], n_layers=smol.n_layers, tokenizer=smol.tokenizer
        )
        with TestClient(app) as client:
            yield Served(client, factory, queues[0], prefix, tiny, workers)
    finally:
        for worker in workers.values():
            worker.stop()
        for queue in queues:
            queue.close()
        keys = redis.Redis.from_url(redis_url)
        for key in keys.scan_iter(f"{prefix}:*"):
            keys.delete(key)
        keys.close()
        engine.dispose()


def _jobs(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(Job)) or 0)


def _edit(model: str | None, **fields: object) -> dict[str, object]:
    body: dict[str, object] = {"prompt": PROMPT, "hop1_phrase": HOP1, "bridge": "Japan", "answer": "Tokyo"}
    return body | ({} if model is None else {"model": model}) | fields


def test_the_models_are_listed_with_what_their_workers_hold(served: Served) -> None:
    items = {m["base_model"]: m for m in served.client.get("/v1/models").json()["items"]}
    assert set(items) == {EMBEDDED_MODEL, served.tiny.name}
    smol, tiny = items[EMBEDDED_MODEL], items[served.tiny.name]
    assert (smol["n_layers"], tiny["n_layers"]) == (30, 4)
    assert smol["family"] == tiny["family"] == "llama" and smol["dtype"] == tiny["dtype"] == "float32"
    assert smol["served"] and tiny["served"] and smol["fingerprint"] != tiny["fingerprint"]
    assert tiny["fingerprint"] == served.tiny.fingerprint
    assert [w["id"] for w in tiny["workers"]] == ["w-tiny"] and [w["id"] for w in smol["workers"]] == ["w-smol"]
    assert tiny["workers"][0]["n_layers"] == 4


def test_a_request_names_its_model_when_two_are_served(served: Served) -> None:
    before = _jobs(served.factory)
    for path, body in (("/v1/edits", _edit(None)), ("/v1/analyses/logit-lens", {"prompt": PROMPT})):
        problem = assert_problem(served.client.post(path, json=body), 422)
        [error] = problem["errors"]
        assert error["loc"] == ["body", "model"] and error["type"] == "model_required"
        assert EMBEDDED_MODEL in error["msg"] and served.tiny.name in error["msg"]
    unknown = assert_problem(served.client.post("/v1/edits", json=_edit("no-such-model")), 422)
    assert unknown["errors"][0]["type"] == "model_not_served"
    assert_problem(served.client.get("/v1/model", params={"model": "no-such-model"}), 404)
    assert _jobs(served.factory) == before


def test_layers_are_bounded_by_the_named_model(served: Served) -> None:
    before = _jobs(served.factory)
    problem = assert_problem(served.client.post("/v1/edits", json=_edit(served.tiny.name, layers=[10])), 422)
    assert problem["errors"][0]["msg"] == "layer 10 is outside 0..3: the model has 4 layers"
    assert _jobs(served.factory) == before
    body = {"prompt": PROMPT, "bridge": "Japan", "answer": "Tokyo", "layers": [10], "model": EMBEDDED_MODEL}
    response = served.client.post("/v1/analyses/intervention", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "succeeded" and job["base_model"] == EMBEDDED_MODEL
    with served.factory() as session:
        assert session.get(Job, job["id"]).claimed_by == "w-smol"  # type: ignore[union-attr]


def test_an_edit_of_one_model_never_touches_the_other(served: Served) -> None:
    client, tiny = served.client, served.tiny.name
    smol_worker, tiny_worker = served.workers[EMBEDDED_MODEL], served.workers[tiny]
    smol_state = client.get("/v1/model", params={"model": EMBEDDED_MODEL}).json()
    smol_checksum, tiny_pristine = smol_worker.reconciler.checksum, tiny_worker.reconciler.checksum
    assert served.gateway_queue.for_model(tiny).stream == f"{served.prefix}:jobs:{tiny}"

    body = _edit(tiny, layers=[1, 2], method="creme", apply="always")
    response = client.post("/v1/edits", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 200, response.text
    edit = response.json()
    assert edit["status"] == "applied" and edit["base_model"] == tiny
    with served.factory() as session:
        job = session.get(Job, edit["job_id"])
        assert job is not None and (job.base_model, job.claimed_by) == (tiny, "w-tiny")

    def converged(model: str, version: int) -> bool:
        state = client.get("/v1/model", params={"model": model}).json()
        return state["converged"] and state["state_version"] == version

    wait_for("the tiny model's worker to converge", lambda: converged(tiny, 1), 30)
    tiny_state = client.get("/v1/model", params={"model": tiny}).json()
    assert tiny_state["active_edits"] == [edit["id"]] and tiny_worker.reconciler.checksum != tiny_pristine
    smol_after = client.get("/v1/model", params={"model": EMBEDDED_MODEL}).json()
    assert (smol_after["state_version"], smol_after["active_edits"]) == (smol_state["state_version"], [])
    assert smol_worker.reconciler.checksum == smol_checksum and smol_worker.reconciler.version == 0
    assert converged(EMBEDDED_MODEL, 0)

    def pristine_bytes() -> dict[str, int | None]:
        return {m["base_model"]: m["pristine_bytes"] for m in client.get("/v1/models").json()["items"]}

    wait_for("the tiny worker to report its pristine copies", lambda: (pristine_bytes()[tiny] or 0) > 0, 10)
    assert pristine_bytes()[tiny] == 2 * 64 * 64 * 4 and pristine_bytes()[EMBEDDED_MODEL] == 0  # two float32 layers

    def listed(path: str, model: str) -> list[str]:
        return [item["id"] for item in client.get(path, params={"model": model}).json()["items"]]

    assert listed("/v1/edits", tiny) == [edit["id"]] and edit["id"] not in listed("/v1/edits", EMBEDDED_MODEL)
    assert edit["job_id"] in listed("/v1/jobs", tiny) and edit["job_id"] not in listed("/v1/jobs", EMBEDDED_MODEL)

    reverted = client.post(f"/v1/edits/{edit['id']}/revert")
    assert reverted.status_code == 200 and reverted.json()["state"] == {"version": 2, "active_edits": []}
    wait_for("the tiny model's worker to restore its weights", lambda: converged(tiny, 2), 30)
    assert tiny_worker.reconciler.checksum == tiny_pristine and smol_worker.reconciler.version == 0

    delta = client.get(f"/v1/edits/{edit['id']}/delta").content  # brought back, it finds its model by fingerprint
    imported = client.post("/v1/edits:import", content=delta, headers={"Content-Type": "application/octet-stream"})
    assert imported.status_code == 201, imported.text
    assert imported.json()["base_model"] == tiny and imported.json()["imported"]["source_bytes"] == len(delta)


def test_a_model_whose_workers_are_gone_is_unavailable_and_the_other_is_the_default(served: Served) -> None:
    tiny = served.tiny.name
    served.workers[tiny].stop()
    before = _jobs(served.factory)
    response = served.client.post("/v1/edits", json=_edit(tiny))
    assert assert_problem(response, 503, "model-unavailable") and response.headers["retry-after"]
    assert _jobs(served.factory) == before
    assert [m["base_model"] for m in served.client.get("/v1/models").json()["items"]] == [EMBEDDED_MODEL]
    lens = served.client.post("/v1/analyses/logit-lens", json={"prompt": PROMPT}, headers={"Prefer": "wait=60"})
    assert lens.status_code == 200 and lens.json()["base_model"] == EMBEDDED_MODEL  # the one model served
