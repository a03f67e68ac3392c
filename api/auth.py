"""Bearer API keys on the ``/v1`` routes: who acts, and whether the key's scope allows the request.

Safe methods (GET, HEAD, OPTIONS) need ``read``; every other method needs ``edit``. A key is
required once any active key exists or ``require_auth`` is set; a key that is presented is always
checked, so an invalid or revoked one is refused even while the API is open. Tokens are never logged.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ProblemError
from api.http import in_session
from service.db.models import ApiKey
from service.keys import auth_required, authenticate, scope_allows

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
CHALLENGE = 'Bearer realm="creme"'

bearer = HTTPBearer(auto_error=False, description="An API key (`creme_…`) made with `creme keys create`.")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def needed_scope(method: str) -> str:
    """The scope a request with ``method`` needs."""
    return "read" if method.upper() in SAFE_METHODS else "edit"


def _unauthorized(detail: str, error: str | None = None) -> ProblemError:
    challenge = CHALLENGE if error is None else f'{CHALLENGE}, error="{error}"'
    return ProblemError(401, detail, title="Unauthorized", headers={"WWW-Authenticate": challenge})


async def authorize(request: Request, credentials: Credentials) -> None:
    """Admit the request or raise a 401/403 problem; sets ``request.state.actor`` to ``key:<prefix>``."""
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
        return
    if key is None:
        raise _unauthorized("the API key is invalid or revoked", error="invalid_token")
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
