"""Patching from the failing prompt alone, through the API on the embedded model (no mocks).

One service for the module, as ``creme serve`` runs it embedded (:func:`tests.support.live.live_service`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.engine.helpers import failing_case
from tests.support import assert_problem, wait_for
from tests.support.live import live_service

pytestmark = pytest.mark.slow

CASE = failing_case("mquake-2hop-0394")  # the model answers both hops (Japan, Tokyo) and fails the composition
UNANSWERABLE = {"prompt": "The square of 1 2 3 4 is", "hop1_phrase": "1 2 3 4"}  # its first hop: " 1." (trivial)
WAIT = {"Prefer": "wait=120"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    with live_service(tmp_path_factory.mktemp("inferred")) as live, httpx.Client(base_url=live.url, timeout=180) as c:
        yield c


def _finished(client: httpx.Client, url: str, pending: tuple[str, ...]) -> dict[str, Any]:
    return wait_for(url, lambda: (item := client.get(url).json())["status"] not in pending and item, 300)


def _model_version(client: httpx.Client) -> int:
    return int(client.get("/v1/model").json()["state_version"])


def test_a_query_the_model_knows_gets_its_bridge_and_answer_inferred_and_applied(client: httpx.Client) -> None:
    before = _model_version(client)
    body = {"prompt": CASE.compositional, "hop1_phrase": CASE.hop1_phrase, "layers": [12, 13, 14], "apply": "always"}
    created = client.post("/v1/edits", json=body, headers=WAIT)
    assert created.status_code in (200, 202), created.text
    edit = _finished(client, f"/v1/edits/{created.json()['id']}", ("pending", "computing"))

    assert edit["status"] == "applied", edit["error"]
    assert (edit["bridge"], edit["answer"]) == ("Japan", "Tokyo")
    assert edit["inferred"] == {"bridge": True, "answer": True}
    assert [event["action"] for event in edit["history"]] == ["apply"]
    assert _model_version(client) == before + 1
    job = client.get(f"/v1/jobs/{edit['job_id']}").json()
    assert job["result"]["inferred"] == {"bridge": True, "answer": True}
    assert (job["result"]["bridge"], job["result"]["answer"]) == ("Japan", "Tokyo")
    reverted = client.post(f"/v1/edits/{edit['id']}/revert")  # the next tests see the pristine model
    assert reverted.status_code == 200 and reverted.json()["edit"]["status"] == "reverted", reverted.text


def test_a_query_the_model_cannot_answer_fails_naming_the_step_and_applies_nothing(client: httpx.Client) -> None:
    before = _model_version(client)
    created = client.post("/v1/edits", json={**UNANSWERABLE, "apply": "always"}, headers=WAIT)
    assert created.status_code in (200, 202), created.text
    edit = _finished(client, f"/v1/edits/{created.json()['id']}", ("pending", "computing"))

    assert edit["status"] == "failed" and edit["history"] == []
    error = edit["error"]
    assert error["type"] == "https://creme.dev/problems/inference-failed" and error["status"] == 422
    assert error["step"] == "first hop" and error["prompt"] == "1 2 3 4 is"
    assert error["continuation"].startswith(" 1.")
    assert "cannot infer the first hop" in error["detail"] and repr(error["continuation"]) in error["detail"]
    assert (edit["bridge"], edit["answer"], edit["inferred"]) == (None, None, {"bridge": True, "answer": True})
    job = client.get(f"/v1/jobs/{edit['job_id']}").json()
    assert job["status"] == "failed" and job["error"] == error
    assert_problem(client.get(f"/v1/edits/{edit['id']}/delta"), 404)
    assert _model_version(client) == before


def test_an_intervention_infers_what_it_needs_from_the_first_hop_phrase(client: httpx.Client) -> None:
    body = {"prompt": CASE.compositional, "hop1_phrase": CASE.hop1_phrase, "layers": [12]}
    created = client.post("/v1/analyses/intervention", json=body, headers=WAIT)
    assert created.status_code in (200, 202), created.text
    job = _finished(client, f"/v1/analyses/{created.json()['id']}", ("queued", "running"))

    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["bridge"], result["answer"]) == ("Japan", "Tokyo")
    assert result["inferred"] == {"bridge": True, "answer": True}
    assert [layer["layer"] for layer in result["layers"]] == [12]
