"""The client's exceptions: RFC 9457 problems by HTTP status, unreachable servers, waits that ran out."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import httpx


class CremeError(Exception):
    """A request the service refused or failed; ``problem`` is its problem+json body (extension members too)."""

    def __init__(
        self,
        status: int | None,
        type: str,
        title: str,
        detail: str | None = None,
        problem: dict[str, Any] | None = None,
    ) -> None:
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.problem = problem if problem is not None else {}
        prefix = f"{status} {title}" if status is not None else title
        super().__init__(f"{prefix}: {detail}" if detail else prefix)


class Unauthorized(CremeError):
    """401: the API key is missing, invalid or revoked."""


class Forbidden(CremeError):
    """403: the API key lacks the scope the request needs."""


class NotFound(CremeError):
    """404: no such edit, job or route."""


class Conflict(CremeError):
    """409: the request does not fit the current state (say, reverting an edit that is not applied)."""


class PreconditionFailed(CremeError):
    """412: the model state is no longer at the ``If-Match`` version."""

    @property
    def current_version(self) -> int | None:
        """The state version the server is at now."""
        return self.problem.get("current_version")


class Invalid(CremeError):
    """422: the request is invalid; ``errors`` lists each field's problem."""

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.problem.get("errors") or [])


class Unavailable(CremeError):
    """503: the database, the job queue or the tokenizer is down; retry later."""


class ConnectionFailed(CremeError):
    """The service could not be reached, or did not answer in time."""


class WaitTimeout(CremeError, TimeoutError):
    """A job did not finish within the time the caller was willing to wait."""


_BY_STATUS: dict[int, type[CremeError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    412: PreconditionFailed,
    422: Invalid,
    503: Unavailable,
}


def _phrase(status: int | None) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_error(problem: dict[str, Any], status: int | None = None) -> CremeError:
    """The exception for ``problem`` (its own ``status`` unless one is given)."""
    code = status if status is not None else problem.get("status")
    code = code if isinstance(code, int) else None
    title = problem.get("title") or _phrase(code)
    error_class = _BY_STATUS.get(code, CremeError) if code is not None else CremeError
    return error_class(code, problem.get("type") or "about:blank", title, problem.get("detail"), problem)


def response_error(response: httpx.Response) -> CremeError:
    """The exception for an error response; a body that is not a JSON object becomes the detail."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": response.reason_phrase, "detail": response.text[:500] or None}
    return problem_error(body, response.status_code)
