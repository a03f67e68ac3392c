"""The job runner on a tiny model: every analysis kind returns its JSON result; helpers behave."""

from __future__ import annotations

import json
import math

import pytest
from pydantic import ValidationError
from sqlalchemy import update

from service.db import Edit, Job
from service.engine.creme import CompositionalQuery, compute_edit, default_layers
from service.engine.evaluate import PARAPHRASE_FRAME
from service.engine.loading import LoadedModel
from service.engine.weights import WeightState
from service.jobs import InProcessQueue
from service.settings import Settings
from service.usecases.kinds import KINDS
from service.usecases.validation import EditRequest
from tests.workers.support import CASE, Factory, add_edit, add_job
from workers.claims import claim
from workers.context import JobContext, json_safe, problem_for
from workers.edit_job import eval_sets
from workers.reconcile import Reconciler
from workers.runner import HANDLERS, check_handlers, handles, run_job

ANALYSES = {
    "logit-lens": {"prompt": CASE["prompt"], "targets": ["India", "Asia"], "top_k": 3},
    "locate": {k: CASE[k] for k in ("prompt", "hop1_phrase", "bridge", "answer")} | {"window": 2},
    "intervention": {"prompt": CASE["prompt"], "bridge": "India", "answer": "Asia", "layers": [1, 2]},
    "compositionality": {
        "cases": [
            {
                "id": "case-1",
                "compositional": CASE["prompt"],
                "hop1_phrase": CASE["hop1_phrase"],
                "bridge": "India",
                "hop2": "The continent that India is located in is",
                "answer": "Asia",
            }
        ]
    },
}


@pytest.mark.parametrize("kind", sorted(ANALYSES))
def test_analysis_jobs_return_json(factory: Factory, tiny_pair: tuple[LoadedModel, LoadedModel], kind: str) -> None:
    lm = tiny_pair[0]
    weights = WeightState(lm)
    reconciler = Reconciler(lm, weights, factory, worker_id="w")
    assert reconciler.reconcile() == 0
    queue = InProcessQueue()
    ctx = JobContext(lm, weights, factory, queue, "w", Settings(), reconciler)
    job_id = add_job(factory, kind, ANALYSES[kind])
    with factory() as session:
        job = claim(session, job_id, "w", 30.0)
    assert job is not None
    result = run_job(job, ctx)
    assert result["state_version"] == 0
    json.dumps(result, allow_nan=False)
    if kind == "compositionality":
        assert result["n"] == 1 and len(result["checks"]) == 1
    elif kind == "logit-lens":
        assert len(result["layers"]) == lm.n_layers
    queue.close()


def test_eval_sets_from_an_edit_request() -> None:
    generalization = [{"prompt": "G", "answer": "g"}]
    request = {"prompt": "P", "hop1_phrase": "P", "paraphrases": ["Q1?"], "generalization": generalization}
    sets = eval_sets(EditRequest.model_validate(request), "A")
    assert [p.prompt for p in sets.correction] == ["P"]
    assert sets.paraphrase[0].prompt == PARAPHRASE_FRAME.format(question="Q1?") and sets.paraphrase[0].answer == "A"
    assert sets.generalization[0].answer == "g" and sets.specificity == ()
    with pytest.raises(ValidationError):  # the runner parses the stored request with the gateway's model
        EditRequest.model_validate({**request, "specificity": [{"prompt": "S"}]})


def test_helpers(tiny_pair: tuple[LoadedModel, LoadedModel]) -> None:
    layers = default_layers(tiny_pair[0])
    assert layers and all(0 <= n < tiny_pair[0].n_layers for n in layers)
    assert json_safe({"a": [1.0, math.nan, {"b": math.inf}], 2: (3,)}) == {"a": [1.0, None, {"b": None}], "2": [3]}
    assert problem_for(ValueError("bad"))["status"] == 422
    failure = problem_for(RuntimeError("boom"))
    assert failure["status"] == 500 and "RuntimeError: boom" in failure["detail"]


def _computed_edit_job(factory: Factory, lm: LoadedModel, edit_id: str, metrics: dict) -> tuple[JobContext, Job]:
    """Store ``metrics`` on the computed edit, queue its job and claim it for worker "w"."""
    with factory() as session:
        session.execute(update(Edit).where(Edit.id == edit_id).values(metrics=metrics))
        session.commit()
    weights = WeightState(lm)
    reconciler = Reconciler(lm, weights, factory, worker_id="w")
    ctx = JobContext(lm, weights, factory, InProcessQueue(), "w", Settings(), reconciler)
    job_id = add_job(factory, "edit", {"edit_id": edit_id})
    with factory() as session:
        job = claim(session, job_id, "w", 30.0)
    assert job is not None
    return ctx, job


def test_a_retried_edit_job_applies_what_an_earlier_attempt_computed(
    factory: Factory, tiny_pair: tuple[LoadedModel, LoadedModel]
) -> None:
    """The worker died after storing the delta and before applying it: the retry only applies."""
    lm = tiny_pair[0]
    query = CompositionalQuery(CASE["prompt"], CASE["hop1_phrase"], CASE["bridge"])
    delta = compute_edit(lm, query, [1, 2]).delta
    edit_id = add_edit(factory, lm, delta=delta, status="computed", layers=[1, 2])
    ctx, job = _computed_edit_job(factory, lm, edit_id, {"improved": True})
    weights, queue = ctx.weights, ctx.queue
    try:
        result = run_job(job, ctx)  # type: ignore[arg-type]
        assert result["applied"] and result["status"] == "applied" and result["state_version"] == 1
        assert weights.active_ids == [edit_id]
    finally:
        weights.set_active([])
        queue.close()


@pytest.mark.parametrize(("safe", "applied"), [(False, False), (True, True)])
def test_if_safe_applies_only_a_safe_edit(
    factory: Factory, tiny_pair: tuple[LoadedModel, LoadedModel], safe: bool, applied: bool
) -> None:
    """A computed edit whose safety check found a broken canary stays computed, with the reason."""
    lm = tiny_pair[0]
    query = CompositionalQuery(CASE["prompt"], CASE["hop1_phrase"], CASE["bridge"])
    delta = compute_edit(lm, query, [1, 2]).delta
    edit_id = add_edit(factory, lm, delta=delta, status="computed", layers=[1, 2], apply_policy="if_safe")
    broken = {"prompt": "The capital of France is", "answer": "Paris", "aliases": [], "source": "fact"}
    safety = {
        "safe": safe,
        "fixes_own_query": True,
        "own_continuation": " Asia",
        "canaries": {"checked": 1, "kept": int(safe), "regressions": [] if safe else [broken]},
    }
    ctx, job = _computed_edit_job(factory, lm, edit_id, {"improved": True, "safety": safety})
    weights, queue = ctx.weights, ctx.queue
    try:
        result = run_job(job, ctx)  # type: ignore[arg-type]
        assert result["applied"] is applied and result["safe"] is safe
        assert weights.active_ids == ([edit_id] if applied else [])
        if not applied:
            assert result["status"] == "computed"
            assert "The capital of France is" in result["refused"] and "1 canary" in result["refused"]
    finally:
        weights.set_active([])
        queue.close()


def test_every_declared_kind_has_exactly_one_handler() -> None:
    assert sorted(HANDLERS) == sorted(KINDS)
    with pytest.raises(ValueError, match="already has a handler"):
        handles("locate")(lambda job, payload, ctx: {})
    with pytest.raises(LookupError, match="not a declared job kind"):
        handles("rome")(lambda job, payload, ctx: {})
    assert sorted(HANDLERS) == sorted(KINDS)  # a refused registration changes nothing
    with pytest.raises(RuntimeError, match=r"without a handler: \['score'\]"):
        check_handlers({kind: handler for kind, handler in HANDLERS.items() if kind != "score"})
