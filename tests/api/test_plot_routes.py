"""``GET /v1/analyses/{id}/plot.{png,svg}`` and ``GET /v1/edits/{id}/plot.{png,svg}``: figures of real results.

Analyses and edits run on the tiny model in the in-process worker (``embedded``); the 409 cases use
the app without a worker, where jobs stay queued until cancelled.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from service.engine.inputs import default_band
from service.keys import create_key
from service.plots import token_label
from tests.api.support import EDIT_BODY, compute_edit
from tests.support import assert_problem, png_size
from workers import Worker

WAIT = {"Prefer": "wait=60"}
SVG = "{http://www.w3.org/2000/svg}"
QUERY = {key: EDIT_BODY[key] for key in ("prompt", "hop1_phrase", "bridge", "answer")}


def run_analysis(client: TestClient, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Submit an analysis, wait for it, and return the finished job."""
    response = client.post(f"/v1/analyses/{kind}", json=body, headers=WAIT)
    assert response.status_code == 200 and response.json()["status"] == "succeeded", response.text
    job: dict[str, Any] = response.json()
    return job


def png(response: httpx.Response) -> tuple[int, int]:
    """The size of the PNG a response carries, after checking its type, signature and that it decodes."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return png_size(response.content)


def svg_texts(response: httpx.Response) -> list[str]:
    """The lines of text of the SVG a response carries, after checking its type and that it parses."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(response.content)
    assert root.tag == f"{SVG}svg"
    return ["".join(element.itertext()) for element in root.iter(f"{SVG}text")]


def test_logit_lens_plot(embedded: tuple[TestClient, Worker]) -> None:
    client, _ = embedded
    job = run_analysis(client, "logit-lens", {"prompt": EDIT_BODY["prompt"], "targets": ["Tokyo", "Japan"]})
    width, height = png(client.get(f"/v1/analyses/{job['id']}/plot.png"))
    assert 500 <= width <= 1400 and 350 <= height <= 1900, (width, height)
    texts = svg_texts(client.get(f"/v1/analyses/{job['id']}/plot.svg"))
    assert {"Tokyo", "Japan", "top-1 token and its p", "layer (its output read through the unembedding)"} <= set(texts)
    for layer in job["result"]["layers"]:
        top = layer["top"][0]
        label = token_label(top["token"]).replace(r"\$", "$")  # drawn without its escape
        assert f"{label} {top['prob']:.2f}" in texts
    head = client.head(f"/v1/analyses/{job['id']}/plot.png")
    assert head.status_code == 200 and head.headers["content-type"] == "image/png" and head.content == b""


def test_locate_plot_outlines_the_default_edit_band(embedded: tuple[TestClient, Worker]) -> None:
    client, worker = embedded
    job = run_analysis(client, "locate", QUERY | {"window": 2})
    width, height = png(client.get(f"/v1/analyses/{job['id']}/plot.png"))
    assert 450 <= width <= 1800 and 350 <= height <= 900, (width, height)
    texts = svg_texts(client.get(f"/v1/analyses/{job['id']}/plot.svg"))
    band = default_band(worker.lm.name, worker.lm.n_layers)
    assert f"default edit band, layers {band[0]}–{band[-1]}" in texts
    assert {"hidden state (block output)", "MLP output, 2 layers around each", "layer patched"} <= set(texts)


def test_intervention_plot(embedded: tuple[TestClient, Worker]) -> None:
    client, _ = embedded
    job = run_analysis(client, "intervention", {"prompt": EDIT_BODY["prompt"], "bridge": "Japan", "answer": "Tokyo"})
    assert png(client.get(f"/v1/analyses/{job['id']}/plot.png")) == (880, 484)
    texts = svg_texts(client.get(f"/v1/analyses/{job['id']}/plot.svg"))
    assert {"no edit", "'Japan' suppressed", "p('Tokyo') at the last position"} <= set(texts)


def test_edit_plot_after_an_edit(embedded: tuple[TestClient, Worker]) -> None:
    client, _ = embedded
    body = EDIT_BODY | {
        "layers": [1, 2],
        "method": "creme",
        "apply": "always",
        "paraphrases": ["What is the capital of the country where Mount Fuji is?"],
        "specificity": [{"prompt": "The capital of France is", "answer": "Paris"}],
    }
    response = client.post("/v1/edits", json=body, headers={"Prefer": "wait=120"})
    assert response.status_code == 200 and response.json()["status"] == "applied", response.text
    edit = response.json()
    width, height = png(client.get(f"/v1/edits/{edit['id']}/plot.png"))
    assert (width, height) == (1430, 814)  # query sets above, the norms of the two layers below
    texts = svg_texts(client.get(f"/v1/edits/{edit['id']}/plot.svg"))
    assert {"correction", "paraphrase", "specificity", "n=1", "greedy accuracy", "before", "after"} <= set(texts)
    assert "generalization" not in texts  # no query was given for it
    assert {"‖ΔW‖ (Frobenius norm)", "edited layer", "1", "2"} <= set(texts)
    assert any(t.startswith(f"Edit {edit['id']}: 'The capital of") for t in texts)  # the title, cut to fit


def test_a_finished_analysis_without_what_its_plot_needs_is_409(embedded: tuple[TestClient, Worker]) -> None:
    client, _ = embedded
    job = run_analysis(client, "logit-lens", {"prompt": EDIT_BODY["prompt"]})  # no targets
    problem = assert_problem(client.get(f"/v1/analyses/{job['id']}/plot.png"), 409, "not-plottable")
    assert "no targets" in problem["detail"] and problem["job_status"] == "succeeded"


def test_unknown_ids_and_other_kinds_are_404(client: TestClient) -> None:
    assert_problem(client.get("/v1/analyses/no-such-job/plot.png"), 404, "not-found")
    assert_problem(client.get("/v1/edits/no-such-edit/plot.svg"), 404, "not-found")
    edit_job = client.post("/v1/edits", json=EDIT_BODY).json()["job"]["id"]
    assert_problem(client.get(f"/v1/analyses/{edit_job}/plot.png"), 404, "not-found")  # not an analysis
    assert_problem(client.get(f"/v1/analyses/{edit_job}/plot.jpg"), 422, "validation")


def test_unfinished_and_cancelled_jobs_and_edits_are_409(client: TestClient) -> None:
    lens = client.post("/v1/analyses/logit-lens", json={"prompt": EDIT_BODY["prompt"], "targets": ["Tokyo"]})
    job_id = lens.json()["id"]
    problem = assert_problem(client.get(f"/v1/analyses/{job_id}/plot.svg"), 409, "not-finished")
    assert problem["job_status"] == "queued" and job_id in problem["detail"]
    edit = client.post("/v1/edits", json=EDIT_BODY).json()
    problem = assert_problem(client.get(f"/v1/edits/{edit['id']}/plot.png"), 409, "not-finished")
    assert problem["edit_status"] == "pending"

    for cancelled in (job_id, edit["job"]["id"]):
        assert client.post(f"/v1/jobs/{cancelled}/cancel").json()["status"] == "cancelled"
    problem = assert_problem(client.get(f"/v1/analyses/{job_id}/plot.png"), 409, "not-plottable")
    assert problem["job_status"] == "cancelled" and "no result" in problem["detail"]
    problem = assert_problem(client.get(f"/v1/edits/{edit['id']}/plot.svg"), 409, "not-plottable")
    assert problem["edit_status"] == "failed" and "no metrics" in problem["detail"]


def test_plots_need_the_read_scope_like_the_resource(client: TestClient, factory: sessionmaker[Session]) -> None:
    edit_id = client.post("/v1/edits", json=EDIT_BODY).json()["id"]
    compute_edit(factory, edit_id)  # a worker's result with only the delta's norms
    with factory() as session:
        _, reader = create_key(session, "plots", ["read"])
    assert_problem(client.get(f"/v1/edits/{edit_id}/plot.png"), 401, "unauthorized")
    response = client.get(f"/v1/edits/{edit_id}/plot.svg", headers={"Authorization": f"Bearer {reader}"})
    texts = svg_texts(response)
    assert {"size of the update per edited layer", "4", "5"} <= set(texts) and "greedy accuracy" not in texts
