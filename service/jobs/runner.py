"""Run one claimed job on the model: dispatch on its kind with the typed payload of ``payloads.py``.

Everything here runs on the worker's single model thread after a reconcile, so analyses and new
edits see the weights of the current desired state and nothing changes them meanwhile.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import update
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import Edit, EditDelta, Job, utcnow
from service.db.session import session_scope
from service.db.state import NotFound, StateConflict, StateError, VersionMismatch, apply_edit
from service.engine.context import EditContext
from service.engine.creme import CompositionalQuery, EditCancelled
from service.engine.delta import InvalidDeltaError, sha256_hex
from service.engine.evaluate import PARAPHRASE_FRAME, EvalSets, Probe, evaluate_edit
from service.engine.judging import DEFAULT_RULE
from service.engine.loading import LoadedModel
from service.engine.methods import compute_with, method_spec
from service.engine.safety import Canary, check_safety
from service.engine.weights import WeightState
from service.jobs import payloads as P
from service.jobs.claims import ClaimLost, is_cancel_requested, lock_claim, mark_edit_failed, report_progress
from service.jobs.queue import JobQueue, QueueUnavailable
from service.logs import JOBS, event
from service.problems import problem
from service.reconcile import Reconciler
from service.settings import Settings

log = logging.getLogger(__name__)

APPLY_RETRIES = 5

# The database (or the connection to it) failed: no verdict on the job, which is retried once its lease expires.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, PoolTimeoutError)


class JobError(Exception):
    """A job failure with a ready problem object (bad input, wrong model, edit already failed)."""

    def __init__(self, problem_obj: dict[str, Any]) -> None:
        super().__init__(problem_obj["detail"])
        self.problem = problem_obj


def _never() -> bool:
    return False


@dataclass
class JobContext:
    """What a job needs from its worker; ``should_stop`` is true when the worker is shutting down
    or has lost the claim (an edit then stops at the next layer)."""

    lm: LoadedModel
    weights: WeightState
    session_factory: sessionmaker[Session]
    queue: JobQueue
    worker_id: str
    settings: Settings
    reconciler: Reconciler
    should_stop: Callable[[], bool] = _never
    edit_context: EditContext = field(init=False)

    def __post_init__(self) -> None:
        self.edit_context = EditContext(self.lm, self.weights, self.settings.cache_dir)


def default_layers(lm: LoadedModel) -> list[int]:
    """The engine's default edit band, else layers 10-20 clipped to the model (middle third if none fit)."""
    from service.engine import creme

    chosen = getattr(creme, "default_layers", None)
    if chosen is not None:
        return list(chosen(lm))
    n = lm.n_layers
    return [layer for layer in range(10, 21) if layer < n] or list(range(n // 3, max(n // 3 + 1, 2 * n // 3)))


def problem_for(exc: BaseException) -> dict[str, Any]:
    """The RFC 9457-like problem object recorded for a job that raised ``exc``."""
    if isinstance(exc, JobError):
        return exc.problem
    if isinstance(exc, ValidationError):
        return problem("invalid-payload", "invalid job payload", 422, str(exc))
    if isinstance(exc, InvalidDeltaError):
        return problem("delta-rejected", "delta rejected", 422, str(exc))
    if isinstance(exc, NotFound):
        return problem("not-found", "not found", 404, str(exc))
    if isinstance(exc, StateError):
        return problem("state-conflict", "model state conflict", 409, str(exc))
    if isinstance(exc, ValueError):
        return problem("invalid-input", "invalid job input", 422, str(exc))
    return problem("job-failed", "job failed", 500, f"{type(exc).__name__}: {exc}")


def run_job(job: Job, ctx: JobContext) -> dict[str, Any]:
    """Run ``job`` (already claimed by ``ctx.worker_id``) and return its JSON result.

    Raises :class:`~service.engine.creme.EditCancelled` when an edit was cancelled or the worker
    is stopping, :class:`~service.jobs.claims.ClaimLost` when the claim was lost, and any other
    exception for a failure (map it with :func:`problem_for`).
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


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (Postgres JSON rejects them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# -- progress and cancellation -------------------------------------------------------------


def _progress(ctx: JobContext, job: Job, step: int, total: int | None, message: str) -> None:
    try:
        with ctx.session_factory() as session:
            held = report_progress(session, job.id, ctx.worker_id, step, total, message)
    except SQLAlchemyError as exc:  # progress is best effort; the claim is checked again on write
        log.warning("job %s: could not record progress: %s", job.id, exc)
        return
    if not held:
        raise ClaimLost(f"job {job.id} is no longer held by {ctx.worker_id}")


def _cancelled(ctx: JobContext, job: Job) -> bool:
    if ctx.should_stop():
        return True
    try:
        with ctx.session_factory() as session:
            return is_cancel_requested(session, job.id)
    except SQLAlchemyError as exc:
        log.warning("job %s: could not read the cancel flag: %s", job.id, exc)
        return False


# -- edit ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EditRequest:
    id: str
    status: str
    base_model: str
    prompt: str
    hop1_phrase: str
    bridge: str
    answer: str
    request: dict[str, Any]
    layers: list[int]
    method: str
    apply_policy: str
    actor: str | None
    error: dict[str, Any] | None
    metrics: dict[str, Any] | None
    computed_on_version: int | None


def _probes(items: Iterable[Any] | None) -> tuple[Probe, ...]:
    """Probes from ``[{prompt|cloze, answer}]``."""
    probes = []
    for item in items or ():
        prompt = item.get("prompt") or item.get("cloze")
        if not prompt or not item.get("answer"):
            raise ValueError(f"evaluation query needs a prompt and an answer: {item!r}")
        probes.append(Probe(str(prompt), str(item["answer"])))
    return tuple(probes)


def eval_sets(prompt: str, answer: str, request: dict[str, Any]) -> EvalSets:
    """The evaluation sets of an edit request; paraphrases are questions put in the QA frame."""
    raw = request.get("paraphrases") or ()
    questions = [q if isinstance(q, str) else q.get("question") or q.get("prompt") for q in raw]
    aliases = tuple(request.get("answer_aliases") or ())
    return EvalSets(
        correction=(Probe(prompt, answer, aliases),),
        paraphrase=tuple(Probe(PARAPHRASE_FRAME.format(question=q), answer, aliases) for q in questions if q),
        generalization=_probes(request.get("generalization")),
        specificity=_probes(request.get("specificity")),
    )


def _load_edit(ctx: JobContext, edit_id: str) -> _EditRequest:
    with ctx.session_factory() as session:
        edit = session.get(Edit, edit_id)
        if edit is None:
            raise JobError(problem("not-found", "edit not found", 404, f"edit {edit_id} does not exist"))
        return _EditRequest(
            id=edit.id,
            status=edit.status,
            base_model=edit.base_model,
            prompt=edit.prompt,
            hop1_phrase=edit.hop1_phrase,
            bridge=edit.bridge,
            answer=edit.answer,
            request=dict(edit.request or {}),
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


def _edit(job: Job, payload: P.EditPayload, ctx: JobContext) -> dict[str, Any]:
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
        with session_scope(ctx.session_factory) as session:
            if not lock_claim(session, job.id, ctx.worker_id):
                raise ClaimLost(f"job {job.id} is no longer held by {ctx.worker_id}")
            _set_edit(session, edit.id, ("pending", "computing"), status="computing", error=None)
        return _compute_and_apply(job, edit, ctx)
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


def _compute_and_apply(job: Job, edit: _EditRequest, ctx: JobContext) -> dict[str, Any]:
    lm = ctx.lm
    layers = edit.layers or list(edit.request.get("layers") or []) or default_layers(lm)
    total = len(layers) + 2
    version = ctx.reconciler.version
    rule = edit.request.get("judge") or DEFAULT_RULE
    aliases = tuple(edit.request.get("answer_aliases") or ())
    spec = method_spec(edit.method, edit.request.get("templates") or "published")
    result = compute_with(
        ctx.edit_context,
        CompositionalQuery(edit.prompt, edit.hop1_phrase, edit.bridge),
        layers,
        spec,
        answer=edit.answer,
        answer_aliases=aliases,
        rule=rule,
        progress=lambda step, _n, message: _progress(ctx, job, step, total, message),
        should_cancel=lambda: _cancelled(ctx, job),
    )
    _progress(ctx, job, len(layers) + 1, total, "evaluating and checking canaries")
    sets = eval_sets(edit.prompt, edit.answer, edit.request)
    evaluation = evaluate_edit(lm, ctx.weights, result.delta, sets, edited_answer=edit.answer, rule=rule)
    safety = check_safety(ctx.edit_context, result.delta, Canary(edit.prompt, edit.answer, aliases), rule)
    if _cancelled(ctx, job):
        raise EditCancelled("edit cancelled")
    evaluated = evaluation.to_dict()
    metrics = {
        **evaluated["sets"],
        "judge": rule,
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
        session.merge(EditDelta(edit_id=edit.id, data=data, sha256=sha256_hex(data), shapes=result.delta.shapes()))
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
    _progress(ctx, job, len(layers) + 2, total, "applying")
    return _settle(ctx, edit, metrics, layers=layers, computed_on=version)


def _settle(
    ctx: JobContext, edit: _EditRequest, metrics: dict[str, Any], *, layers: list[int], computed_on: int | None
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


def _apply(ctx: JobContext, edit: _EditRequest) -> tuple[bool, str | None]:
    """Activate the computed edit (retrying concurrent state changes), nudge every worker, reconcile."""
    actor = edit.actor or f"worker:{ctx.worker_id}"
    for attempt in range(APPLY_RETRIES):
        try:
            with ctx.session_factory() as session:
                apply_edit(session, ctx.lm.name, edit.id, expected_version=None, actor=actor)
            break
        except VersionMismatch:
            time.sleep(0.05 * (attempt + 1))
        except StateConflict as exc:
            return False, str(exc)
    else:
        return False, f"the model state kept changing; gave up after {APPLY_RETRIES} tries"
    try:
        ctx.queue.publish_nudge("state")
    except QueueUnavailable as exc:
        log.warning("could not nudge workers after applying edit %s: %s", edit.id, exc)
    ctx.reconciler.reconcile()
    return True, None


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
    from service.cases import TwoHopCase
    from service.engine.compositionality import check_cases

    cases = [TwoHopCase.from_dict(raw) for raw in p.cases]
    report = check_cases(ctx.lm, cases, progress=lambda step, total, msg: _progress(ctx, job, step, total, msg))
    return report.to_dict()


def _generate(job: Job, p: P.GeneratePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import greedy

    return {"text": greedy(ctx.lm, [p.prompt], max_new_tokens=p.max_new_tokens)[0]}


def _score(job: Job, p: P.ScorePayload, ctx: JobContext) -> dict[str, Any]:
    from service.engine.prompts import answer_probs

    probs = answer_probs(ctx.lm, [p.prompt] * len(p.answers), p.answers)
    return {"answers": [{"answer": a, "probability": prob} for a, prob in zip(p.answers, probs, strict=True)]}


_HANDLERS: dict[str, Callable[[Job, Any, JobContext], dict[str, Any]]] = {
    "edit": _edit,
    "logit-lens": _logit_lens,
    "locate": _locate,
    "intervention": _intervention,
    "compositionality": _compositionality,
    "generate": _generate,
    "score": _score,
}
