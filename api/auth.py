"""Bearer API keys on the ``/v1`` routes: who acts, and whether the key's scope allows the request.

Safe methods (GET, HEAD, OPTIONS) need ``read``; every other method needs ``edit``. A key is
required once any active key exists or ``require_auth`` is set; a key that is presented is always
checked, so an invalid or revoked one is refused even while the API is open. The check runs in
:class:`AuthorizedRoute`, before the request's body is parsed or validated. Tokens are never logged.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ProblemError
from api.http import in_session
from service.db.models import ApiKey
from service.keys import auth_required, authenticate, scope_allows

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CHALLENGE = 'Bearer realm="creme"'
ANONYMOUS = "anonymous"

bearer = HTTPBearer(auto_error=False, description="An API key (`creme_…`) made with `creme keys create`.")


def needed_scope(method: str) -> str:
    """The scope a request with ``method`` needs."""
    return "read" if method.upper() in SAFE_METHODS else "edit"


def _unauthorized(detail: str, error: str | None = None) -> ProblemError:
    challenge = CHALLENGE if error is None else f'{CHALLENGE}, error="{error}"'
    return ProblemError(401, detail, title="Unauthorized", headers={"WWW-Authenticate": challenge})


async def authorize(request: Request) -> None:
    """Admit the request or raise a 401/403 problem.

    Sets ``request.state.principal`` (``key:<id>``, or ``anonymous`` when no key is sent) and, for a
    key, ``request.state.actor`` (``key:<prefix>``).
    """
    credentials = await bearer(request)
    token = credentials.credentials if credentials is not None else None
    require_auth = bool(request.app.state.settings.require_auth)

    def check(session: Session) -> tuple[bool, ApiKey | None]:
        if token is not None:
            return True, authenticate(session, token)
        return auth_required(session, require_auth), None

    required, key = await in_session(request.app.state.session_factory, check)
    if token is None:
        if required:
            raise _unauthorized("an API key is required: send `Authorization: Bearer <key>`")
        request.state.principal = ANONYMOUS
        return
    if key is None:
        raise _unauthorized("the API key is invalid or revoked", error="invalid_token")
    request.state.principal = f"key:{key.id}"
    request.state.actor = f"key:{key.prefix}"
    needed = needed_scope(request.method)
    if not scope_allows(key.scopes, needed):
        raise ProblemError(
            403,
            f"this request needs the {needed!r} scope; key {key.prefix} has {key.scopes}",
            slug="insufficient-scope",
            title="Insufficient scope",
            headers={"WWW-Authenticate": f'{CHALLENGE}, error="insufficient_scope", scope="{needed}"'},
            required_scope=needed,
            key_scopes=list(key.scopes),
        )


class AuthorizedRoute(APIRoute):
    """A route that runs :func:`authorize` before FastAPI reads the body.

    FastAPI parses a JSON body before it solves any dependency, so a dependency alone would answer
    a malformed body with a 422 that details it, even to a caller without a key.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def authorized(request: Request) -> Response:
            await authorize(request)
            return await handler(request)

        return authorized
