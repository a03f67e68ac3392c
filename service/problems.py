"""Problem details (RFC 9457) shared by the gateway and the workers: the type URIs and the object."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://creme.dev/problems/"
CANCELLED = "cancelled"  # the one problem type of cancellation, whoever cancels
INFERENCE_FAILED = "inference-failed"  # the model's own answer cannot serve as the bridge or the answer


def problem_type(slug: str) -> str:
    """The stable type URI of a problem."""
    return PROBLEM_BASE + slug


def problem(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    """A problem object as stored in a job's or an edit's ``error`` and served by the API."""
    return {"type": problem_type(slug), "title": title, "status": status, "detail": detail}


def cancelled_problem(detail: str) -> dict[str, Any]:
    """The problem of every cancelled job, and of the edit it was computing (which becomes ``failed``)."""
    return problem(CANCELLED, "Cancelled", 409, detail)


def inference_failed_problem(step: str, prompt: str, continuation: str, detail: str) -> dict[str, Any]:
    """The problem of a job whose bridge or answer could not be inferred: the ``step`` ("first hop" or
    "second hop"), the ``prompt`` the model was asked and its ``continuation``."""
    detail = f"{detail}; give the bridge and answer in the request instead"
    body = problem(INFERENCE_FAILED, "Inference failed", 422, detail)
    return {**body, "step": step, "prompt": prompt, "continuation": continuation}
