"""Persistence: SQLAlchemy models, engine/session factories, and model-state transitions.

Migrations live in :mod:`service.db.migrate` (imported on demand; it pulls in Alembic).
"""

from service.db.models import (
    ApiKey,
    Base,
    Edit,
    Job,
    ModelState,
    StateEvent,
    StoredDelta,
    Worker,
    new_uuid,
    utcnow,
)
from service.db.session import make_engine, make_session_factory, session_scope
from service.db.state import (
    NotFound,
    StateConflict,
    StateError,
    VersionMismatch,
    apply_edit,
    get_state,
    revert_edit,
)

__all__ = [
    "ApiKey",
    "Base",
    "Edit",
    "Job",
    "ModelState",
    "NotFound",
    "StateConflict",
    "StateError",
    "StateEvent",
    "StoredDelta",
    "VersionMismatch",
    "Worker",
    "apply_edit",
    "get_state",
    "make_engine",
    "make_session_factory",
    "new_uuid",
    "revert_edit",
    "session_scope",
    "utcnow",
]
