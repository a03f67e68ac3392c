"""The edit job: compute the delta, evaluate it, check its safety, store it and apply it as its policy says."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db.models import Edit, Job, StoredDelta, utcnow
from service.db.session import session_scope
from service.engine.creme import EditCancelled, default_layers, fallback_bands
from service.engine.delta import sha256_hex
from service.engine.evaluate import PARAPHRASE_FRAME, EvalSets, Probe, evaluate_edit
from service.engine.infer import InferredQuery, infer_query
from service.engine.methods import compute_with, method_spec
from service.engine.safety import Canary, check_safety
from service.jobs.payloads import EditPayload
from service.problems import problem
from service.usecases.edits import change_state
from service.usecases.errors import ConflictError
from service.usecases.validation import EditRequest
from workers.claims import ClaimLost, lock_claim, mark_edit_failed
from workers.context import DATABASE_UNAVAILABLE, JobContext, JobError, cancelled, json_safe, problem_for, progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EditRow:
    """What the job reads of its edit: where it stands, and the request the gateway validated."""

    id: str
    status: str
    base_model: str
    request: EditRequest
    layers: list[int]
    method: str
    apply_policy: str
    actor: str | None
    error: dict[str, Any] | None
    metrics: dict[str, Any] | None
    computed_on_version: int | None


def eval_sets(request: EditRequest, answer: str) -> EvalSets:
    """The evaluation sets of an edit request whose answer is ``answer``; paraphrases are put in the QA frame."""
    aliases = tuple(request.answer_aliases)
    return EvalSets(
        correction=(Probe(request.prompt, answer, aliases),),
        paraphrase=tuple(Probe(PARAPHRASE_FRAME.format(question=q), answer, aliases) for q in request.paraphrases),
        generalization=tuple(Probe(p.prompt, p.answer) for p in request.generalization),
        specificity=tuple(Probe(p.prompt, p.answer) for p in request.specificity),
    )


def _load_edit(ctx: JobContext, edit_id: str) -> _EditRow:
    with ctx.session_factory() as session:
        edit = session.get(Edit, edit_id)
        if edit is None:
            raise JobError(problem("not-found", "edit not found", 404, f"edit {edit_id} does not exist"))
        return _EditRow(
            id=edit.id,
            status=edit.status,
            base_model=edit.base_model,
            request=EditRequest.model_validate(edit.request),
            layers=list(edit.layers or []),
            method=edit.method,
            apply_policy=edit.apply_policy,
            actor=edit.actor,
            error=edit.error,
            metrics=edit.metrics,
            computed_on_version=edit.computed_on_version,
        )


def _set_edit(session: Session, edit_id: str, from_status: tuple[str, ...], **values: Any) -> None:
    result = session.execute(
        update(Edit)
        .where(Edit.id == edit_id, Edit.status.in_(from_status))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise JobError(problem("edit-conflict", "edit changed concurrently", 409, f"edit {edit_id} changed status"))


def run_edit(job: Job, payload: EditPayload, ctx: JobContext) -> dict[str, Any]:
    """The ``edit`` job; an edit an earlier attempt computed or finished is settled, not recomputed.

    A bridge or answer the request leaves out is first inferred from the model as it is now and
    stored on the edit; if the model's own answer is unusable the edit fails with an
    ``inference-failed`` problem naming the step, and nothing is computed or applied.
    """
    edit = _load_edit(ctx, payload.edit_id)
    if edit.status in ("applied", "reverted"):  # an earlier attempt finished it
        return {"edit_id": edit.id, "status": edit.status, "applied": edit.status == "applied", "recomputed": False}
    if edit.status == "computed":  # an earlier attempt stored it, then stopped before applying
        return _settle(ctx, edit, edit.metrics or {}, layers=edit.layers, computed_on=edit.computed_on_version)
    if edit.status == "failed":
        raise JobError(edit.error or problem("edit-failed", "edit failed", 409, f"edit {edit.id} already failed"))
    try:
        if edit.base_model != ctx.lm.name:
            detail = f"edit {edit.id} is for base model {edit.base_model!r}; this worker serves {ctx.lm.name!r}"
            raise JobError(problem("wrong-base-model", "wrong base model", 409, detail))
        req = edit.request
        query = infer_query(ctx.lm, req.prompt, req.hop1_phrase, bridge=req.bridge, answer=req.answer)
        with session_scope(ctx.session_factory) as session:
            if not lock_claim(session, job.id, ctx.worker_id):
                raise ClaimLost(f"job {job.id} is no longer held by {ctx.worker_id}")
            values = {"bridge": query.query.bridge, "answer": query.answer}
            _set_edit(session, edit.id, ("pending", "computing"), status="computing", error=None, **values)
        return _compute_and_apply(job, edit, query, ctx)
    except (EditCancelled, ClaimLost, *DATABASE_UNAVAILABLE):
        raise
    except Exception as exc:
        try:
            with session_scope(ctx.session_factory) as session:
                if lock_claim(session, job.id, ctx.worker_id):
                    mark_edit_failed(session, edit.id, problem_for(exc))
        except SQLAlchemyError as db_exc:  # the sweep fails the edit once the job is given up
            log.warning("could not mark edit %s failed: %s", edit.id, db_exc)
        raise


def _compute_and_apply(job: Job, edit: _EditRow, query: InferredQuery, ctx: JobContext) -> dict[str, Any]:
    lm, req, answer = ctx.lm, edit.request, query.answer
    chosen = edit.layers or req.layers  # a band the request named is kept; the default one auto may widen
    layers = chosen or default_layers(lm)
    wider = fallback_bands(lm) if edit.method == "auto" and not chosen else []
    total = len(layers) + sum(map(len, wider)) + 2
    version = ctx.reconciler.version
    aliases = tuple(req.answer_aliases)
    result = compute_with(
        ctx.edit_context,
        query.query,
        layers,
        method_spec(edit.method, req.templates, model=lm.name),
        answer=answer,
        answer_aliases=aliases,
        rule=req.judge,
        wider_bands=wider,
        progress=lambda step, _n, message: progress(ctx, job, step, total, message),
        should_cancel=lambda: cancelled(ctx, job),
    )
    layers = result.delta.layers  # the band auto chose
    progress(ctx, job, total - 1, total, "evaluating and checking canaries")
    sets = eval_sets(req, answer)
    evaluation = evaluate_edit(lm, ctx.weights, result.delta, sets, edited_answer=answer, rule=req.judge)
    safety = check_safety(ctx.edit_context, result.delta, Canary(req.prompt, answer, aliases), req.judge)
    if cancelled(ctx, job):
        raise EditCancelled("edit cancelled")
    evaluated = evaluation.to_dict()
    metrics = {
        **evaluated["sets"],
        "judge": req.judge,
        "improved": evaluation.improved,
        "safety": safety.to_dict(),
        "generic_kl": safety.generic_kl,
        "method": result.delta.method,
        "method_params": result.delta.params,
        "guide_prompt": result.guide_prompt,
        "layer_reports": [asdict(report) for report in result.reports],
        "delta_norms": {str(layer): norm for layer, norm in result.delta.norms().items()},
        "probes": evaluated["probes"],
    }
    data = result.delta.to_bytes()
    with session_scope(ctx.session_factory) as session:
        if not lock_claim(session, job.id, ctx.worker_id):
            raise ClaimLost(f"job {job.id} is no longer held by {ctx.worker_id}")
        session.merge(StoredDelta(edit_id=edit.id, data=data, sha256=sha256_hex(data), shapes=result.delta.shapes()))
        _set_edit(
            session,
            edit.id,
            ("computing",),
            status="computed",
            layers=sorted(set(layers)),
            metrics=json_safe(metrics),
            computed_on_version=version,
            base_fingerprint=lm.fingerprint,
            error=None,
        )
    progress(ctx, job, total, total, "applying")
    return _settle(ctx, edit, metrics, layers=layers, computed_on=version) | query.record()


def _settle(
    ctx: JobContext, edit: _EditRow, metrics: dict[str, Any], *, layers: list[int], computed_on: int | None
) -> dict[str, Any]:
    """Apply a computed edit as its policy says; the job's result.

    ``if_safe`` applies only an edit that fixes its own query and breaks no canary (the known facts
    and the queries of the edits active when it was checked); otherwise it stays ``computed``.
    """
    improved = bool(metrics.get("improved"))
    safety = metrics.get("safety") or {}
    wanted = {
        "always": True,
        "if_improved": improved,
        "if_safe": bool(safety.get("safe")),
        "never": False,
    }.get(edit.apply_policy, False)
    applied, apply_error = _apply(ctx, edit) if wanted else (False, None)
    outcome: dict[str, Any] = {
        "edit_id": edit.id,
        "status": "applied" if applied else "computed",
        "applied": applied,
        "improved": improved,
        "safe": safety.get("safe"),
        "apply_policy": edit.apply_policy,
        "layers": sorted(set(layers)),
        "computed_on_version": computed_on,
        "state_version": ctx.reconciler.version,
    }
    if apply_error:
        outcome["apply_error"] = apply_error
    if edit.apply_policy == "if_safe" and not wanted:
        outcome["refused"] = _refusal(safety)
    return outcome


def _refusal(safety: dict[str, Any]) -> str:
    """Why ``if_safe`` left the edit unapplied, in words."""
    reasons = []
    if not safety.get("fixes_own_query"):
        reasons.append(f"it does not fix its own query (the model says {safety.get('own_continuation')!r})")
    broken = (safety.get("canaries") or {}).get("regressions") or []
    if broken:
        names = "; ".join(f"{c['prompt']!r} ({c['source']})" for c in broken[:5])
        reasons.append(f"it breaks {len(broken)} canar{'y' if len(broken) == 1 else 'ies'}: {names}")
    return "not applied (if_safe): " + (" and ".join(reasons) or "no safety check was recorded")


def _apply(ctx: JobContext, edit: _EditRow) -> tuple[bool, str | None]:
    """Activate the computed edit through the one state change (which retries and nudges), then reconcile."""
    actor = edit.actor or f"worker:{ctx.worker_id}"
    try:
        with ctx.session_factory() as session:
            change_state(session, ctx.queue, edit.id, "apply", None, actor, base_model=ctx.lm.name)
    except ConflictError as exc:
        return False, str(exc)
    ctx.reconciler.reconcile()
    return True, None
