"""End to end in one process, as ``creme serve`` runs it: a Worker thread on the embedded model,
SQLite and the in-process queue. A failing two-hop query gets patched, served, and reverted exactly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import update

from service.db import Edit, Job, StoredDelta, Worker, get_state, make_engine, make_session_factory, revert_edit
from service.db.migrate import upgrade
from service.engine.delta import delta_from_bytes, sha256_hex
from service.engine.loading import LoadedModel
from service.jobs import InProcessQueue
from service.settings import Settings
from tests.support import wait_for
from tests.workers.support import CASE, Factory, add_edit, add_job, finished_job, get
from workers import Worker as WorkerProcess

pytestmark = pytest.mark.slow


@dataclass
class Embedded:
    worker: WorkerProcess
    factory: Factory
    queue: InProcessQueue
    pristine: str


@pytest.fixture(scope="module")
def embedded(smol_lm: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedded]:
    url = f"sqlite:///{Path(tmp_path_factory.mktemp('embedded')) / 'creme.db'}"
    upgrade(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    queue = InProcessQueue().for_model(smol_lm.name)  # the queue the worker consumes
    settings = Settings(
        database_url=url,
        worker_id="embedded-worker",
        heartbeat_seconds=0.2,
        worker_lease_seconds=30.0,
        reconcile_seconds=0.5,
    )
    worker = WorkerProcess(settings, smol_lm, factory, queue, poll_seconds=0.1)
    worker.start()
    assert worker.ready.wait(60), "the worker did not become ready"
    yield Embedded(worker, factory, queue, worker.reconciler.checksum)
    worker.stop()
    assert get(factory, Worker, "embedded-worker").status == "stopped"
    worker.weights.set_active([])  # leave the session's model pristine for other tests
    queue.close()
    engine.dispose()


def _run(env: Embedded, kind: str, payload: dict, timeout: float = 60.0, **columns: object) -> Job:
    job_id = add_job(env.factory, kind, payload, model=env.worker.lm.name, **columns)
    env.queue.enqueue(job_id)
    return finished_job(env.factory, job_id, timeout)


def _p_answer(env: Embedded) -> float:
    job = _run(env, "score", {"prompt": CASE["prompt"], "answers": [CASE["answer"]]})
    assert job.status == "succeeded", job.error
    return float(job.result["answers"][0]["probability"])


def test_edit_job_patches_the_query_and_revert_restores_the_model(embedded: Embedded, smol_lm: LoadedModel) -> None:
    env, factory = embedded, embedded.factory
    p_before = _p_answer(env)
    edit_id = add_edit(factory, smol_lm, layers=[12, 13, 14], apply_policy="if_improved", base_fingerprint="")
    job = _run(env, "edit", {"edit_id": edit_id}, timeout=150.0)

    assert job.status == "succeeded", job.error
    assert job.result["applied"] is True and job.result["status"] == "applied"
    assert job.result["computed_on_version"] == 0 and job.result["state_version"] == 1
    assert job.progress == {"step": 5, "total": 5, "message": "done"}  # 3 layers, evaluate, apply
    edit = get(factory, Edit, edit_id)
    assert edit.status == "applied" and edit.error is None
    assert edit.layers == [12, 13, 14] and edit.computed_on_version == 0
    assert edit.base_fingerprint == smol_lm.fingerprint
    metrics = edit.metrics
    assert metrics["improved"] is True
    assert metrics["correction"]["p_post_mean"] > metrics["correction"]["p_pre_mean"]
    assert metrics["paraphrase"]["n"] == 1 and metrics["specificity"]["n"] == 1
    assert metrics["specificity"]["leakage_pre_mean"] is not None
    assert sorted(metrics["delta_norms"]) == ["12", "13", "14"]
    assert [r["layer"] for r in metrics["layer_reports"]] == [12, 13, 14]
    with factory() as session:
        row = session.get(StoredDelta, edit_id)
        assert row.sha256 == sha256_hex(row.data) and row.shapes == {f"layer.{n}": [576, 576, 1] for n in (12, 13, 14)}
        assert delta_from_bytes(row.data, expected_sha256=row.sha256).layers == [12, 13, 14]
        state = get_state(session, smol_lm.name)
        assert (state.version, state.active_edit_ids) == (1, [edit_id])

    worker = env.worker
    assert worker.weights.active_ids == [edit_id]
    served = worker.weights.checksum()
    assert served != env.pristine

    def heartbeat_shows_the_edit() -> bool:
        row = get(factory, Worker, worker.worker_id)
        return row.state_version == 1 and row.weights_checksum == served and row.status == "idle"

    wait_for("the heartbeat to report version 1", heartbeat_shows_the_edit, 10, interval=0.05)

    p_after = _p_answer(env)  # the worker now serves the edited model
    assert p_after > p_before
    assert p_after == pytest.approx(metrics["correction"]["p_post_mean"], rel=1e-4)

    with factory() as session:
        revert_edit(session, smol_lm.name, edit_id, actor="test")
    env.queue.publish_nudge("state")
    wait_for("the worker to reconcile the revert", lambda: worker.reconciler.version == 2, 10, interval=0.05)
    assert worker.weights.active_ids == [] and worker.weights.checksum() == env.pristine
    assert _p_answer(env) == p_before  # bit-exact revert


def test_generate_and_score_jobs_return_results(embedded: Embedded) -> None:
    job = _run(embedded, "generate", {"prompt": "The capital of France is", "max_new_tokens": 4})
    assert job.status == "succeeded", job.error
    assert isinstance(job.result["text"], str) and job.result["text"].strip()
    assert isinstance(job.result["state_version"], int)
    job = _run(embedded, "score", {"prompt": "The capital of France is", "answers": ["Paris", "Berlin"]})
    assert job.status == "succeeded", job.error
    answers = job.result["answers"]
    assert [a["answer"] for a in answers] == ["Paris", "Berlin"]
    assert 0 < answers[1]["probability"] < answers[0]["probability"] <= 1


def test_a_cancelled_queued_job_never_runs(embedded: Embedded) -> None:
    flagged = _run(embedded, "generate", {"prompt": "Hello"}, cancel_requested=True)
    assert flagged.status == "cancelled" and flagged.started_at is None and flagged.attempts == 0

    job_id = add_job(embedded.factory, "generate", {"prompt": "Hello"}, model=embedded.worker.lm.name)
    with embedded.factory() as session:  # cancelled by the API before any worker saw it
        session.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
        session.commit()
    embedded.queue.enqueue(job_id)
    wait_for("the delivery to be acked", lambda: embedded.queue.depth() == 0, 10, interval=0.05)
    assert get(embedded.factory, Job, job_id).started_at is None


def test_bad_jobs_fail_with_a_problem(embedded: Embedded) -> None:
    job = _run(embedded, "generate", {"prompt": ""})
    assert job.status == "failed" and job.error["status"] == 422 and job.error["type"].endswith("invalid-payload")
    assert job.progress["message"].startswith("failed: ") and "prompt" in job.progress["message"]
    job = _run(embedded, "edit", {"edit_id": "no-such-edit"})
    assert job.status == "failed" and job.error["status"] == 404
    job = _run(embedded, "bogus", {})
    assert job.status == "failed" and job.error["type"].endswith("unknown-kind")
    assert set(job.error) >= {"type", "title", "status", "detail"}
