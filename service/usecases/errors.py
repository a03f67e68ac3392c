"""The failures a use-case reports; each edge maps them to its own vocabulary (HTTP status, exit code)."""

from __future__ import annotations

from typing import Any


class UseCaseError(Exception):
    """Base class: the request was refused and nothing was changed."""


class InvalidRequest(UseCaseError):
    """The input is malformed; ``errors`` are ``{loc, msg, type}`` dicts like pydantic's."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors))


class NotFoundError(UseCaseError, LookupError):
    """The named edit, job or delta does not exist."""


class ConflictError(UseCaseError):
    """The resource is not in a state that allows the operation (e.g. revert of an edit not applied)."""


class PreconditionFailed(UseCaseError):
    """The caller's expected model-state version is stale; ``current_version`` is the version now."""

    def __init__(self, current_version: int, expected_version: int) -> None:
        self.current_version = current_version
        self.expected_version = expected_version
        super().__init__(f"expected state version {expected_version}, current version is {current_version}")


class QueueFull(UseCaseError):
    """Too many jobs are waiting; retry later."""

    def __init__(self, depth: int, limit: int) -> None:
        self.depth = depth
        self.limit = limit
        super().__init__(f"{depth} jobs are queued (limit {limit}); retry later")


class IdempotencyConflict(UseCaseError):
    """An ``Idempotency-Key`` was reused with a different request."""


class ModelUnavailable(UseCaseError):
    """The named base model has workers, but none is alive right now; retry later."""
