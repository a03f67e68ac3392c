"""Fixtures for the fuzz tests: the gateway over a real, seeded database; a tiny LLaMA and CREME deltas."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import strategies as st
from schemathesis import BaseSchema
from schemathesis.config import SchemathesisConfig
from schemathesis.hooks import HookContext
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from service.db import StoredDelta, make_engine, make_session_factory
from service.db.migrate import upgrade
from service.engine.creme import CompositionalQuery, compute_edit
from service.engine.delta import EditDelta, LayerFactors, sha256_hex
from service.engine.loading import LoadedModel
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.api.support import BASE_MODEL, EDIT_BODY, add_worker, set_job
from tests.api.support import compute_edit as store_computed_edit
from tests.fixtures.app import api_settings, build_app
from tests.fixtures.db import BACKENDS, reset_postgres
from tests.fixtures.models import tiny_llama_config, tiny_model

MAX_EXAMPLES = int(os.environ.get("CREME_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("CREME_FUZZ_SEED", "20240601"))


# The API stays open (no key exists), so no Authorization header is generated; auth has its own tests.
FUZZ_CONFIG = SchemathesisConfig.from_dict({"generation": {"with-security-parameters": False}})
CASE = {
    "compositional": "The capital of the country where Mount Fuji is located is",
    "hop1_phrase": "the country where Mount Fuji is located",
    "bridge": "Japan",
    "hop2": "The capital of Japan is",
    "answer": "Tokyo",
}

LENS_RESULT = {  # a made-up two-layer logit lens for the second seeded lens job, stored as a worker stores one
    "prompt": "The capital of Japan is",
    "position": 4,
    "token": " is",
    "apply_final_norm": True,
    "targets": ["Tokyo"],
    "target_token_ids": [[28260]],
    "layers": [
        {
            "layer": layer,
            "top": [{"token": " Tokyo", "token_id": 28260, "prob": 0.25 * (layer + 1)}],
            "targets": [{"target": "Tokyo", "prob": 0.25 * (layer + 1), "rank": 1}],
        }
        for layer in range(2)
    ],
    "state_version": 1,
}


def small_delta() -> bytes:
    """A delta of the seeded edits' layers (4 and 5) for the seeded worker's model (fingerprint ``"f" * 64``):
    stored for the computed edits (their PEFT adapter is made from it) and, at times, the body of an import."""
    factors = tuple(LayerFactors(layer, torch.full((8, 1), 0.5), torch.full((8, 1), 0.25)) for layer in (4, 5))
    query = {"prompt": CASE["compositional"], "hop1_phrase": CASE["hop1_phrase"], "bridge": "Japan", "answer": "Tokyo"}
    return EditDelta(factors, "f" * 64, "llama", method="creme", params={"query": query}).to_bytes()


@dataclass(frozen=True)
class Seeded:
    """Rows put in the database before fuzzing, so ids in paths sometimes name real ones."""

    edit_ids: tuple[str, ...]
    job_ids: tuple[str, ...]  # every job, the analyses' too
    analysis_ids: tuple[str, ...]


def fuzz_settings() -> Settings:
    """Never wait on jobs (no worker runs), and never refuse for queue depth (fuzzing queues many)."""
    return api_settings(max_wait_seconds=0.0, max_queue_depth=1_000_000, worker_lease_seconds=3600.0)


def seed(app: FastAPI, factory: sessionmaker[Session]) -> Seeded:
    """Three edits (two computed with a stored delta, one of them applied), three more jobs (one of them a
    finished logit lens, so its plot can be drawn), a live worker."""
    edit_ids: list[str] = []
    job_ids: list[str] = []
    with TestClient(app) as client:
        for i in range(3):
            body = {**EDIT_BODY, "answer": f"Tokyo {i}"}
            response = client.post("/v1/edits", json=body)
            assert response.status_code == 202, response.text
            edit_ids.append(response.json()["id"])
            job_ids.append(response.json()["job"]["id"])
        delta = small_delta()
        for edit_id in edit_ids[:2]:
            store_computed_edit(factory, edit_id)
            with factory() as session:
                stored = update(StoredDelta).where(StoredDelta.edit_id == edit_id)
                session.execute(stored.values(data=delta, sha256=sha256_hex(delta)))
                session.commit()
        response = client.post(f"/v1/edits/{edit_ids[0]}/apply")
        assert response.status_code == 200, response.text
        response = client.post("/v1/score", json={"prompt": "The capital of Japan is", "answers": ["Tokyo"]})
        assert response.status_code == 202, response.text
        job_ids.append(response.json()["id"])
        for targets in ([], ["Tokyo"]):
            body = {"prompt": "The capital of Japan is", "targets": targets}
            response = client.post("/v1/analyses/logit-lens", json=body)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
    set_job(factory, job_ids[-1], "succeeded", result=LENS_RESULT)
    add_worker(factory, "fuzz-worker", version=1)
    return Seeded(edit_ids=tuple(edit_ids), job_ids=tuple(job_ids), analysis_ids=tuple(job_ids[-2:]))


@pytest.fixture(scope="module", params=BACKENDS)
def fuzz_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sessionmaker[Session]]:
    """A migrated database shared by one module's tests on each backend (state builds up as in use)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'creme.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        reset_postgres(url)
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def api_schema(fuzz_factory: sessionmaker[Session]) -> Iterator[BaseSchema]:
    """The app's own OpenAPI schema, loaded over ASGI, with seeded ids mixed into path parameters."""
    queue = InProcessQueue()
    app = build_app(fuzz_settings(), fuzz_factory, queue)
    seeded = seed(app, fuzz_factory)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=FUZZ_CONFIG)
    known = {"edit_id": seeded.edit_ids, "job_id": seeded.job_ids}

    @schema.hook
    def flatmap_path_parameters(context: HookContext, path_parameters: dict[str, Any] | None) -> st.SearchStrategy:
        """Keep the generated id, or swap in one that exists (as is, or with a NUL appended).

        Under ``/v1/analyses`` the jobs that exist are the analyses.
        """
        if not isinstance(path_parameters, dict):
            return st.just(path_parameters)
        choices = [st.just(path_parameters)]
        analyses = context.operation is not None and context.operation.path.startswith("/v1/analyses/")
        for name, ids in known.items():
            if name in path_parameters:
                ids = seeded.analysis_ids if analyses and name == "job_id" else ids
                variants = st.sampled_from(ids) | st.sampled_from(ids).map(lambda i: i + "\x00")
                choices.append(variants.map(lambda v, n=name: {**path_parameters, n: v}))
        return st.one_of(choices)

    @schema.hook
    def flatmap_body(context: object, body: Any) -> st.SearchStrategy:
        """Sometimes mend what the schema cannot say, so generated bodies pass validation and reach the database."""
        path = getattr(getattr(context, "operation", None), "path", "")
        if path.endswith(":import"):  # random bytes are never a delta for the served model: sometimes send one
            return st.sampled_from([body, small_delta()])
        if not isinstance(body, dict):
            return st.just(body)
        mended = dict(body)
        if path.endswith("/intervention") and not isinstance(body.get("hop1_phrase"), str):
            mended["hop1_phrase"] = "Japan"  # without bridge and answer, an intervention needs a first-hop phrase
        if isinstance(mended.get("prompt"), str) and isinstance(mended.get("hop1_phrase"), str):
            mended["prompt"] = f"{mended['prompt']} {mended['hop1_phrase']}"  # the hop-1 phrase occurs in the prompt
        if isinstance(body.get("cases"), list):
            mended["cases"] = [CASE]  # the schema leaves a case's fields open
        if "model" in mended:
            mended["model"] = BASE_MODEL  # a random name is no model served here
        return st.sampled_from([body, mended])

    yield schema
    queue.close()


QUERIES = (  # (prompt, hop-1 phrase, bridge, layers): overlapping layer sets, so edits share weights
    ("The capital of the country where Mount Fuji is is", "the country where Mount Fuji is", "Japan", [1, 2]),
    ("The author of Misery was born in the country of", "The author of Misery", "Stephen King", [2, 3]),
    ("The currency of the country of Paris is", "the country of Paris", "France", [0, 1, 2, 3]),
    ("The language of the country of the Eiffel Tower is", "the country of the Eiffel Tower", "France", [1]),
)


@pytest.fixture(scope="session")
def tiny_lm(smol: LoadedModel) -> LoadedModel:
    """A tiny random-weight LLaMA (4 layers) like tests/engine's ``tiny_llama``, but a copy of the fuzz tests' own."""
    return tiny_model(smol, tiny_llama_config(len(smol.tokenizer)), "tiny-llama")


@pytest.fixture(scope="session")
def tiny_deltas(tiny_lm: LoadedModel) -> dict[str, EditDelta]:
    """Four CREME deltas computed on ``tiny_lm`` (which they leave unchanged), by edit id."""
    return {
        f"edit-{i}": compute_edit(tiny_lm, CompositionalQuery(prompt, hop1, bridge), layers).delta
        for i, (prompt, hop1, bridge, layers) in enumerate(QUERIES)
    }
