"""Helpers for the worker tests: rows for jobs and edits, waiting, and a failing case."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.db import Edit, Job, StoredDelta, utcnow
from service.engine.delta import EditDelta, sha256_hex
from service.engine.loading import LoadedModel
from tests.support import wait_for

# MQuAKE (MIT), via Li et al. 2024 ("Understanding and Patching Compositional Reasoning in LLMs"):
# case mquake-2hop-0072, trimmed to one paraphrase and one specificity query. The embedded model
# answers both hops but not the composition; CREME on layers 12-14 raises p(Asia).
CASE = {
    "prompt": "The continent that the country that Uma Bharti is a citizen of is located in is",
    "hop1_phrase": "the country that Uma Bharti is a citizen of",
    "bridge": "India",
    "answer": "Asia",
    "paraphrases": ["In which continent is the country of citizenship of Uma Bharti located?"],
    "generalization": [],
    "specificity": [
        {
            "prompt": "The continent that the country that Sigur Rós was created in is located in is",
            "answer": "Europe",
        }
    ],
}

Factory = sessionmaker[Session]
TEST_MODEL = "test-model"  # the model of a job whose test names none
Pair = tuple[LoadedModel, LoadedModel]  # two workers of one base model (``tiny_pair``, ``pair``)


def add_job(
    factory: Factory, kind: str, payload: dict[str, Any], *, model: str | None = None, age: float = 0.0, **columns: Any
) -> str:
    """Insert a job row (queued unless told otherwise) of ``model``, created ``age`` seconds ago; return its id.

    Without ``model``, an edit job is of its edit's model and any other of :data:`TEST_MODEL`.
    """
    with factory() as session:
        if model is None:
            edit = session.get(Edit, payload["edit_id"]) if "edit_id" in payload else None
            model = edit.base_model if edit is not None else TEST_MODEL
        created_at = utcnow() - timedelta(seconds=age)
        job = Job(kind=kind, base_model=model, payload=payload, created_at=created_at, **columns)
        session.add(job)
        session.commit()
        return job.id


def add_edit(
    factory: Factory,
    lm: LoadedModel,
    *,
    delta: EditDelta | None = None,
    data: bytes | None = None,
    sha256: str | None = None,
    status: str = "pending",
    layers: list[int] | None = None,
    apply_policy: str = "if_improved",
    base_fingerprint: str | None = None,
    request: dict[str, Any] | None = None,
) -> str:
    """Insert an edit of ``lm`` for CASE, with a stored delta when ``delta`` or ``data`` is given."""
    request = dict(CASE if request is None else request)
    with factory() as session:
        edit = Edit(
            status=status,
            prompt=CASE["prompt"],
            hop1_phrase=CASE["hop1_phrase"],
            bridge=CASE["bridge"],
            answer=CASE["answer"],
            request=request,
            layers=layers or [],
            apply_policy=apply_policy,
            base_model=lm.name,
            base_fingerprint=lm.fingerprint if base_fingerprint is None else base_fingerprint,
        )
        if delta is not None or data is not None:
            raw = data if data is not None else delta.to_bytes()  # type: ignore[union-attr]
            shapes = delta.shapes() if delta is not None else {}
            edit.delta = StoredDelta(data=raw, sha256=sha256 or sha256_hex(raw), shapes=shapes)
        session.add(edit)
        session.commit()
        return edit.id


def get(factory: Factory, model: type, key: str) -> Any:
    with factory() as session:
        return session.get(model, key)


def finished_job(factory: Factory, job_id: str, timeout: float = 60.0) -> Job:
    """The job row once it is terminal."""

    def done() -> Job | None:
        job = get(factory, Job, job_id)
        return job if job.status in ("succeeded", "failed", "cancelled") else None

    return wait_for(f"job {job_id} to finish", done, timeout, interval=0.05)
