"""Keyset pagination over (created_at, id), newest first, with opaque cursors."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from service.usecases.errors import InvalidRequest
from service.usecases.validation import contains_nul

T = TypeVar("T")
MAX_LIMIT = 100


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of rows and the cursor of the next page (None on the last page)."""

    items: list[T]
    next_cursor: str | None


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """An opaque, URL-safe cursor pointing just after the row (created_at, row_id)."""
    raw = json.dumps([created_at.astimezone(UTC).isoformat(), row_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) inside a cursor, or :class:`InvalidRequest` if it was not made here."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = datetime.fromisoformat(stamp)
        if not isinstance(row_id, str) or contains_nul(row_id) or created_at.tzinfo is None:
            raise ValueError("malformed cursor")
        created_at = created_at.astimezone(UTC)  # OverflowError at the ends of the datetime range
    except (ValueError, TypeError, OverflowError, binascii.Error, UnicodeDecodeError):
        loc = ["query", "cursor"]
        raise InvalidRequest([{"loc": loc, "msg": "not a cursor returned by this API", "type": "cursor"}]) from None
    return created_at, row_id


def paginate(session: Session, stmt: Select[Any], model: Any, cursor: str | None, limit: int) -> Page[Any]:
    """Run ``stmt`` (a select of ``model``) newest first from ``cursor``, at most ``limit`` rows."""
    if not 1 <= limit <= MAX_LIMIT:
        msg = f"must be between 1 and {MAX_LIMIT}"
        raise InvalidRequest([{"loc": ["query", "limit"], "msg": msg, "type": "limit"}])
    if cursor:
        created_at, row_id = decode_cursor(cursor)
        # A row-value comparison: the database seeks the (created_at, id) index to it instead of filtering.
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(created_at, row_id))
    rows = list(session.scalars(stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None
    return Page(items=rows, next_cursor=next_cursor)
