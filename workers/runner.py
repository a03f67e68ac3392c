"""Run one claimed job on the model: dispatch on its kind with the typed payload of ``service/jobs/payloads.py``.

Everything here runs on the worker's single model thread after a reconcile, so analyses and new
edits see the weights of the current desired state and nothing changes them meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.db.models import Job
from service.engine.creme import CompositionalQuery
from service.jobs import payloads as P
from service.logs import JOBS, event
from service.problems import problem
from workers.context import JobContext, JobError, json_safe, progress
from workers.edit_job import run_edit


def run_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    """Run ``job`` (already claimed by ``ctx.worker_id``) and return its JSON result.

    Raises :class:`~service.engine.creme.EditCancelled` when an edit was cancelled or the worker
    is stopping, :class:`~workers.claims.ClaimLost` when the claim was lost, and any other
    exception for a failure (map it with :func:`~workers.context.problem_for`).
    """
    handler = _HANDLERS.get(job.kind)
    if handler is None:
        raise JobError(problem("unknown-kind", "unknown job kind", 422, f"no handler for job kind {job.kind!r}"))
    result = handler(job, P.parse_payload(job.kind, job.payload), ctx)
    result.setdefault("state_version", ctx.reconciler.version)
    return json_safe(result)


def log_job_end(job: Job, status: str, seconds: float, worker_id: str) -> None:
    """The one ``job`` log event of a job whose outcome was recorded: id, kind, status, seconds, worker."""
    event(JOBS, "job", job_id=job.id, kind=job.kind, status=status, seconds=round(seconds, 6), worker=worker_id)


# -- analyses and queries ------------------------------------------------------------------


def _logit_lens(job: Job, p: P.LogitLensPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.lens import logit_lens

    return logit_lens(ctx.lm, p.prompt, p.targets, top_k=p.top_k, apply_final_norm=p.apply_final_norm).to_dict()


def _locate(job: Job, p: P.LocatePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.locate import locate

    query = CompositionalQuery(p.prompt, p.hop1_phrase, p.bridge)
    return locate(ctx.lm, query, p.answer, window=p.window).to_dict()


def _intervention(job: Job, p: P.InterventionPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.intervene import intervene

    return intervene(ctx.lm, p.prompt, p.bridge, p.answer, layers=p.layers, compensate=p.compensate).to_dict()


def _compositionality(job: Job, p: P.CompositionalityPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.cases import TwoHopCase
    from service.engine.compositionality import check_cases

    cases = [TwoHopCase.from_dict(raw) for raw in p.cases]
    report = check_cases(ctx.lm, cases, progress=lambda step, total, msg: progress(ctx, job, step, total, msg))
    return report.to_dict()


def _generate(job: Job, p: P.GeneratePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import greedy

    return {"text": greedy(ctx.lm, [p.prompt], max_new_tokens=p.max_new_tokens)[0]}


def _score(job: Job, p: P.ScorePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import answer_probs

    probs = answer_probs(ctx.lm, [p.prompt] * len(p.answers), p.answers)
    return {"answers": [{"answer": a, "probability": prob} for a, prob in zip(p.answers, probs, strict=True)]}


_HANDLERS: dict[str, Callable[[Job, Any, JobContext], dict[str, Any]]] = {
    "edit": run_edit,
    "logit-lens": _logit_lens,
    "locate": _locate,
    "intervention": _intervention,
    "compositionality": _compositionality,
    "generate": _generate,
    "score": _score,
}
