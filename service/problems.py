"""Problem details (RFC 9457) shared by the gateway and the workers: the type URIs and the object."""

from __future__ import annotations

from typing import Any

PROBLEM_BASE = "https://creme.dev/problems/"
CANCELLED = "cancelled"  # the one problem type of cancellation, whoever cancels


def problem_type(slug: str) -> str:
    """The stable type URI of a problem."""
    return PROBLEM_BASE + slug


def problem(slug: str, title: str, status: int, detail: str) -> dict[str, Any]:
    """A problem object as stored in a job's or an edit's ``error`` and served by the API."""
    return {"type": problem_type(slug), "title": title, "status": status, "detail": detail}


def cancelled_problem(detail: str) -> dict[str, Any]:
    """The problem of every cancelled job, and of the edit it was computing (which becomes ``failed``)."""
    return problem(CANCELLED, "Cancelled", 409, detail)
