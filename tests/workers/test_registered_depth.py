"""A worker registers its model's depth, and a gateway without the model refuses the layers it lacks."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api import create_app
from service.db import Worker
from service.engine.creme import CompositionalQuery, compute_edit
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.workers.support import CASE, Factory, Pair, get
from workers import Worker as WorkerProcess


def test_the_gateway_refuses_the_layers_a_registered_worker_lacks(factory: Factory, pair: Pair) -> None:
    lm = pair[0]
    settings = Settings(model=lm.name, worker_id="w-depth", heartbeat_seconds=0.2, reconcile_seconds=30.0)
    worker = WorkerProcess(settings, lm, factory, InProcessQueue(), poll_seconds=0.1)
    gateway_queue = InProcessQueue()  # the gateway's jobs wait there: no worker runs them
    app = create_app(settings, session_factory=factory, queue=gateway_queue, tokenizer=lm.tokenizer)
    edit = {**CASE, "layers": [lm.n_layers]}
    intervention = {"prompt": CASE["prompt"], "bridge": "India", "answer": "Asia", "layers": [999]}
    with pytest.raises(ValueError) as refused:  # what the worker's engine says of that edit
        compute_edit(lm, CompositionalQuery(CASE["prompt"], CASE["hop1_phrase"], CASE["bridge"]), edit["layers"])
    with TestClient(app) as client:
        assert client.post("/v1/edits", json=edit).status_code == 202  # no worker yet: the job waits
        worker.start()
        try:
            assert worker.ready.wait(30)
            assert get(factory, Worker, "w-depth").n_layers == lm.n_layers == 4
            response = client.post("/v1/edits", json=edit)
            assert response.status_code == 422, response.text
            assert [e["msg"] for e in response.json()["errors"]] == [str(refused.value)]
            response = client.post("/v1/analyses/intervention", json=intervention)
            expected = "layer 999 is outside 0..3: the model has 4 layers"
            assert [e["msg"] for e in response.json()["errors"]] == [expected]
            assert client.post("/v1/edits", json={**CASE, "layers": [3]}).status_code == 202
        finally:
            worker.stop()
        assert client.post("/v1/edits", json=edit).status_code == 202  # stopped: the depth is unknown again
    gateway_queue.close()
