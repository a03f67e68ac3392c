"""SQLAlchemy 2 typed models: the database is the truth for edits, deltas, model state, jobs and keys.

Portable across Postgres and SQLite: UUIDs are 36-character strings, JSON is ``sqlalchemy.JSON``,
bytes are ``LargeBinary`` and every timestamp is a timezone-aware UTC ``datetime``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from service.engine.options import DEFAULT_APPLY, DEFAULT_METHOD

NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

EDIT_STATUSES = ("pending", "computing", "computed", "applied", "reverted", "failed")
APPLY_POLICIES = ("always", "if_improved", "never")
STATE_ACTIONS = ("apply", "revert")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
JOB_TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
API_SCOPES = ("read", "edit", "admin")


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def new_uuid() -> str:
    """A random UUID4 as its canonical 36-character string."""
    return str(uuid.uuid4())


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that stores UTC and always returns aware UTC datetimes.

    SQLite keeps no offset, so values are normalised to UTC on the way in (naive values are
    taken to be UTC already) and tagged UTC on the way out.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON columns that may be absent store SQL NULL (not the JSON literal ``null``).
NullableJSON = JSON(none_as_null=True)


class Base(DeclarativeBase):
    """Declarative base with a constraint naming convention shared by models and migrations."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Edit(Base):
    """One CREME edit: the request, where it stands, and how it scored."""

    __tablename__ = "edits"
    # Keyset pagination (newest first) reads these in order, with or without a filter, and never sorts.
    __table_args__ = (
        Index("ix_edits_created_at_id", "created_at", "id"),
        Index("ix_edits_status_created_at_id", "status", "created_at", "id"),
        Index("ix_edits_base_model_created_at_id", "base_model", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    prompt: Mapped[str] = mapped_column(Text)
    hop1_phrase: Mapped[str] = mapped_column(Text)
    bridge: Mapped[str | None] = mapped_column(Text)  # None until the worker infers it (the request had none)
    answer: Mapped[str | None] = mapped_column(Text)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    layers: Mapped[list[int]] = mapped_column(JSON)
    method: Mapped[str] = mapped_column(String(32), default=DEFAULT_METHOD)
    apply_policy: Mapped[str] = mapped_column(String(16), default=DEFAULT_APPLY)
    base_model: Mapped[str] = mapped_column(String(255))
    base_fingerprint: Mapped[str] = mapped_column(String(128))
    computed_on_version: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column()
    reverted_at: Mapped[datetime | None] = mapped_column()
    actor: Mapped[str | None] = mapped_column(String(255))

    delta: Mapped[StoredDelta | None] = relationship(
        back_populates="edit", cascade="all, delete-orphan", passive_deletes=True, lazy="select"
    )


class StoredDelta(Base):
    """The safetensors bytes of an edit's per-layer factors; loaded only when needed."""

    __tablename__ = "edit_deltas"

    edit_id: Mapped[str] = mapped_column(String(36), ForeignKey("edits.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    shapes: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    edit: Mapped[Edit] = relationship(back_populates="delta")


class ModelState(Base):
    """The desired state of one base model: a version and the ordered active edit ids."""

    __tablename__ = "model_state"

    base_model: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    active_edit_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class StateEvent(Base):
    """Append-only audit log of apply/revert transitions; ``version`` is the version they produced.

    ``idempotency_key`` and ``request_hash`` let a retried apply/revert replay its first outcome.
    """

    __tablename__ = "state_events"
    __table_args__ = (Index("ix_state_events_base_model_version", "base_model", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    base_model: Mapped[str] = mapped_column(String(255))
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    edit_id: Mapped[str] = mapped_column(String(36), index=True)
    actor: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))


def _initial_progress() -> dict[str, Any]:
    return {"step": 0, "total": None, "message": "queued"}


class Job(Base):
    """A unit of queued work (an edit computation or an analysis) for one base model, with its progress and outcome."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_base_model_status", "base_model", "status"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    kind: Mapped[str] = mapped_column(String(32))
    base_model: Mapped[str] = mapped_column(String(255))  # the model whose workers (and stream) take it
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=_initial_progress)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    required_state_version: Mapped[int | None] = mapped_column(Integer)
    result: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()


class Worker(Base):
    """A worker process as it last reported itself (heartbeat)."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    base_model: Mapped[str] = mapped_column(String(255))
    model_fingerprint: Mapped[str] = mapped_column(String(128))
    n_layers: Mapped[int | None] = mapped_column(Integer)  # the model's depth; None from workers before 0003
    family: Mapped[str | None] = mapped_column(String(64))  # None from workers before 0005
    dtype: Mapped[str | None] = mapped_column(String(16))
    pristine_bytes: Mapped[int | None] = mapped_column(BigInteger)  # held by the copies of edited layers
    state_version: Mapped[int] = mapped_column(Integer)
    weights_checksum: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(32))
    last_heartbeat: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """An API key, stored only as the sha256 hex of its secret, with scopes."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_uuid)
    name: Mapped[str] = mapped_column(String(255))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
