"""Run one claimed job on the model: each kind declared in :mod:`service.usecases.kinds` has exactly one
handler here, which gets the job's payload parsed with the model its kind declares.

Everything here runs on the worker's single model thread after a reconcile, so analyses and new
edits see the weights of the current desired state and nothing changes them meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.db.models import Job
from service.engine.infer import infer_query
from service.jobs import payloads as P
from service.logs import JOBS, event
from service.problems import problem
from service.usecases.kinds import KINDS
from workers.context import JobContext, JobError, json_safe, progress
from workers.edit_job import run_edit

Handler = Callable[[Job, Any, JobContext], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}


def handles(kind: str) -> Callable[[Handler], Handler]:
    """Register the handler of the declared ``kind``; an undeclared kind, or a second handler, is an error."""

    def register(handler: Handler) -> Handler:
        if kind not in KINDS:
            raise LookupError(f"{kind!r} is not a declared job kind (service/usecases/kinds.py)")
        if kind in HANDLERS:
            raise ValueError(f"job kind {kind!r} already has a handler: {HANDLERS[kind].__qualname__}")
        HANDLERS[kind] = handler
        return handler

    return register


def check_handlers(handlers: Mapping[str, Handler]) -> None:
    """Raise unless every declared job kind has a handler."""
    missing = [kind for kind in KINDS if kind not in handlers]
    if missing:
        raise RuntimeError(f"declared job kinds without a handler: {missing}")


def run_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    """Run ``job`` (already claimed by ``ctx.worker_id``) and return its JSON result.

    Raises :class:`~service.engine.creme.EditCancelled` when an edit was cancelled or the worker
    is stopping, :class:`~workers.claims.ClaimLost` when the claim was lost, and any other
    exception for a failure (map it with :func:`~workers.context.problem_for`).
    """
    handler = HANDLERS.get(job.kind)
    if handler is None:
        raise JobError(problem("unknown-kind", "unknown job kind", 422, f"no handler for job kind {job.kind!r}"))
    result = handler(job, KINDS[job.kind].payload.model_validate(job.payload), ctx)
    result.setdefault("state_version", ctx.reconciler.version)
    return json_safe(result)


def log_job_end(job: Job, status: str, seconds: float, worker_id: str) -> None:
    """The one ``job`` log event of a job whose outcome was recorded: id, kind, status, seconds, worker."""
    event(JOBS, "job", job_id=job.id, kind=job.kind, status=status, seconds=round(seconds, 6), worker=worker_id)


# -- the handlers --------------------------------------------------------------------------

handles("edit")(run_edit)


@handles("logit-lens")
def _logit_lens(job: Job, p: P.LogitLensPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.lens import logit_lens

    return logit_lens(ctx.lm, p.prompt, p.targets, top_k=p.top_k, apply_final_norm=p.apply_final_norm).to_dict()


@handles("locate")
def _locate(job: Job, p: P.LocatePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.locate import locate

    inferred = infer_query(ctx.lm, p.prompt, p.hop1_phrase, bridge=p.bridge, answer=p.answer)
    return locate(ctx.lm, inferred.query, inferred.answer, window=p.window).to_dict() | inferred.record()


@handles("intervention")
def _intervention(job: Job, p: P.InterventionPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.intervene import intervene

    bridge, answer = p.bridge, p.answer
    if bridge is None or answer is None:
        if p.hop1_phrase is None:
            raise ValueError("inferring the bridge or the answer needs the hop-1 phrase")
        inferred = infer_query(ctx.lm, p.prompt, p.hop1_phrase, bridge=bridge, answer=answer)
        bridge, answer = inferred.query.bridge, inferred.answer
    result = intervene(ctx.lm, p.prompt, bridge, answer, layers=p.layers, compensate=p.compensate).to_dict()
    return result | {"inferred": {"bridge": p.bridge is None, "answer": p.answer is None}}


@handles("compositionality")
def _compositionality(job: Job, p: P.CompositionalityPayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.cases import TwoHopCase
    from service.engine.compositionality import check_cases

    cases = [TwoHopCase.from_dict(raw) for raw in p.cases]
    report = check_cases(ctx.lm, cases, progress=lambda step, total, msg: progress(ctx, job, step, total, msg))
    return report.to_dict()


@handles("generate")
def _generate(job: Job, p: P.GeneratePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import greedy

    return {"text": greedy(ctx.lm, [p.prompt], max_new_tokens=p.max_new_tokens)[0]}


@handles("score")
def _score(job: Job, p: P.ScorePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import answer_probs

    probs = answer_probs(ctx.lm, [p.prompt] * len(p.answers), p.answers)
    return {"answers": [{"answer": a, "probability": prob} for a, prob in zip(p.answers, probs, strict=True)]}


check_handlers(HANDLERS)  # at import: a worker never starts without a way to run a declared kind
