"""RFC 9457 problem details: the one error format of the API, and the handlers that produce it."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.jobs.queue import QueueUnavailable
from service.problems import problem_type
from service.usecases.errors import (
    ConflictError,
    IdempotencyConflict,
    InvalidRequest,
    ModelUnavailable,
    NotFoundError,
    PreconditionFailed,
    QueueFull,
)

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "5"

_SLUGS = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    409: "conflict",
    412: "precondition-failed",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "too-many-requests",
    500: "internal",
    503: "unavailable",
}


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extras: Any,
) -> JSONResponse:
    """An ``application/problem+json`` response; ``extras`` become extension members."""
    body = {
        "type": problem_type(slug or _SLUGS.get(status, "http")),
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
        **extras,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


class ProblemError(Exception):
    """Raise from a route to answer with a problem; ``extras`` become extension members."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extras: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.headers = headers
        self.extras = extras


def _instance(request: Request) -> str:
    return request.url.path


def _clean_errors(errors: Any) -> list[dict[str, Any]]:
    """Field errors without the offending input (it may be huge) or non-JSON context."""
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in errors]


def _validation(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
    detail = f"invalid request: {fields}" if fields else "invalid request"
    if len(errors) == 1:
        detail = f"{fields}: {errors[0]['msg']}"
    return problem_response(422, detail, title="Invalid request", instance=_instance(request), errors=errors)


async def _on_request_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _validation(request, _clean_errors(exc.errors()))


async def _on_invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidRequest)
    return _validation(request, exc.errors)


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(exc.status_code, detail, instance=_instance(request), headers=headers)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        instance=_instance(request),
        headers=exc.headers,
        **exc.extras,
    )


async def _on_not_found(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(404, str(exc), instance=_instance(request))


async def _on_conflict(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(409, str(exc), instance=_instance(request))


async def _on_precondition(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PreconditionFailed)
    return problem_response(
        412,
        str(exc),
        title="State version changed",
        instance=_instance(request),
        headers={"ETag": f'"{exc.current_version}"'},
        current_version=exc.current_version,
        expected_version=exc.expected_version,
    )


async def _on_idempotency(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(
        422, str(exc), slug="idempotency-key-reused", title="Idempotency key reused", instance=_instance(request)
    )


async def _on_queue_full(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, QueueFull)
    return problem_response(
        429,
        str(exc),
        slug="queue-full",
        title="Too many queued jobs",
        instance=_instance(request),
        headers={"Retry-After": RETRY_AFTER_SECONDS},
        queued=exc.depth,
        limit=exc.limit,
    )


def _unavailable(request: Request, slug: str, what: str, detail: str | None = None) -> JSONResponse:
    """503 ``<slug>-unavailable``: ``what`` is down, and the client may retry after a few seconds."""
    return problem_response(
        503,
        detail or f"the {what} is unavailable; retry later",
        slug=f"{slug}-unavailable",
        title=f"{slug.capitalize()} unavailable",
        instance=_instance(request),
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


async def _on_model_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _unavailable(request, "model", "model", str(exc))


async def _on_database(request: Request, exc: Exception) -> JSONResponse:
    log.error("database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return _unavailable(request, "database", "database")


async def _on_queue(request: Request, exc: Exception) -> JSONResponse:
    log.error("queue unavailable on %s %s: %s", request.method, request.url.path, exc)
    return _unavailable(request, "queue", "job queue")


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "an unexpected error occurred", instance=_instance(request))


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error with a problem; database and queue outages are 503, never a stack trace."""
    app.add_exception_handler(RequestValidationError, _on_request_validation)
    app.add_exception_handler(InvalidRequest, _on_invalid_request)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(NotFoundError, _on_not_found)
    app.add_exception_handler(ConflictError, _on_conflict)
    app.add_exception_handler(PreconditionFailed, _on_precondition)
    app.add_exception_handler(IdempotencyConflict, _on_idempotency)
    app.add_exception_handler(QueueFull, _on_queue_full)
    app.add_exception_handler(ModelUnavailable, _on_model_unavailable)
    for db_error in (OperationalError, InterfaceError, PoolTimeoutError):
        app.add_exception_handler(db_error, _on_database)
    app.add_exception_handler(QueueUnavailable, _on_queue)
    app.add_exception_handler(Exception, _on_unexpected)
    _document_problems_only(app)


def _document_problems_only(app: FastAPI) -> None:
    """Document problem answers as ``application/problem+json`` only, the one type they are sent with.

    FastAPI also lists ``application/json`` for every response that names a model; that entry is
    dropped wherever a problem+json one stands beside it.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for item in generate().get("paths", {}).values():
                for operation in item.values():
                    for response in operation.get("responses", {}).values() if isinstance(operation, dict) else ():
                        content = response.get("content", {})
                        if PROBLEM_MEDIA_TYPE in content:
                            content.pop("application/json", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
