"""Pure ASGI middleware: the request body size limit, request metrics by route template, the access log."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import problem_response
from api.metrics import Metrics
from service.logs import REQUESTS, event

UNMATCHED_ROUTE = "<unmatched>"


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, by Content-Length and by the bytes actually streamed.

    The body is read (at most ``max_bytes``) before the app runs and then replayed to it, so a
    refused request never reaches a route.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, detail: str) -> None:
        response = problem_response(status, detail, instance=scope.get("path"))
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):
                await self._refuse(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(length) > self.max_bytes:
                detail = f"request body of {int(length)} bytes exceeds the limit of {self.max_bytes} bytes"
                await self._refuse(scope, receive, send, 413, detail)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away; let the app see it
                replay: list[Message] = [message]
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                detail = f"request body exceeds the limit of {self.max_bytes} bytes"
                await self._refuse(scope, receive, send, 413, detail)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]
                break

        async def replay_receive() -> Message:
            return replay.pop(0) if replay else await receive()

        await self.app(scope, replay_receive, send)


class HeadMiddleware:
    """Answer HEAD as GET would, without the body (FastAPI routes GET alone, which left HEAD a 405)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_without_body)


class MetricsMiddleware:
    """Count requests and time them, labelled by method, route template and status.

    The route is the one the router chose; for requests refused before routing (e.g. 413) it is
    found by matching ``routes``, and paths that match none are labelled ``<unmatched>``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None and hasattr(route, "path"):
            return str(route.path)
        for candidate in self.routes:
            match, _ = candidate.matches(scope)
            if match != Match.NONE and hasattr(candidate, "path"):
                return str(candidate.path)
        return UNMATCHED_ROUTE

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(scope["method"], self._route(scope), status, time.perf_counter() - started)


class AccessLogMiddleware:
    """One ``request`` log event per HTTP request: request id, method, path, status, seconds.

    The request id is new for each request and returned in the ``X-Request-ID`` header, so a
    client can name the line. The query string is not logged.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = round(time.perf_counter() - started, 6)
            fields = {"request_id": request_id, "method": scope["method"], "path": scope["path"], "status": status}
            event(REQUESTS, "request", **fields, seconds=seconds)
