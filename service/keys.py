"""API keys: create, list, revoke and authenticate; and whether the gateway may bind a public address.

A key is ``creme_`` followed by 32 random bytes in URL-safe base64. Only its sha256 (hex) and an
8-character display prefix (the first characters after ``creme_``) are stored; the plaintext is
shown once, by :func:`create_key`. Scopes are ``read`` < ``edit`` < ``admin``, each implying the
ones below it. Nothing here imports FastAPI.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.attributes import set_committed_value

from service.db.models import API_SCOPES, ApiKey, new_uuid, utcnow
from service.usecases.errors import ConflictError, NotFoundError

KEY_PREFIX = "creme_"
DISPLAY_CHARS = 8
MAX_TOKEN_CHARS = 256
LAST_USED_RESOLUTION = timedelta(minutes=1)
SCOPE_RANK = {scope: rank for rank, scope in enumerate(API_SCOPES)}
LOOPBACK_NAMES = ("localhost",)


class BindRefused(Exception):
    """Serving on a non-loopback address without any way to authenticate."""


def hash_key(token: str) -> str:
    """The sha256 hex digest under which a key is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def display_prefix(token: str) -> str:
    """The stored, shown part of a key: the first characters of its random part."""
    return token[len(KEY_PREFIX) : len(KEY_PREFIX) + DISPLAY_CHARS]


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """``scopes`` deduplicated in the order read, edit, admin; ValueError on an unknown or no scope."""
    given = set(scopes)
    unknown = sorted(given - set(API_SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {unknown}: must be among {list(API_SCOPES)}")
    if not given:
        raise ValueError(f"a key needs at least one scope of {list(API_SCOPES)}")
    return [scope for scope in API_SCOPES if scope in given]


def scope_allows(scopes: Iterable[str], needed: str) -> bool:
    """Whether a key with ``scopes`` may act where ``needed`` is required (admin ⊇ edit ⊇ read)."""
    ranks = [SCOPE_RANK[s] for s in scopes if s in SCOPE_RANK]
    return bool(ranks) and max(ranks) >= SCOPE_RANK[needed]


def _new_token() -> str:
    """A random key whose display prefix does not start with "-" (a command line would read it as an option)."""
    while True:
        token = KEY_PREFIX + secrets.token_urlsafe(32)
        if not display_prefix(token).startswith("-"):
            return token


def create_key(session: Session, name: str, scopes: Iterable[str]) -> tuple[ApiKey, str]:
    """Store a new key (committed) and return it with its plaintext, which is not kept anywhere."""
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    normalized = normalize_scopes(scopes)
    for _ in range(3):  # a clash of 32 random bytes is practically impossible; of display prefixes, rare
        token = _new_token()
        prefix = display_prefix(token)
        clash = session.scalar(select(ApiKey.id).where(ApiKey.prefix == prefix))
        if clash is None:
            break
    key = ApiKey(
        id=new_uuid(), name=name, key_hash=hash_key(token), prefix=prefix, scopes=normalized, created_at=utcnow()
    )
    session.add(key)
    session.commit()
    return key, token


def list_keys(session: Session, *, include_revoked: bool = True) -> list[ApiKey]:
    """Keys oldest first (never their secrets)."""
    stmt = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(stmt))


def revoke_key(session: Session, key_id_or_prefix: str) -> ApiKey:
    """Revoke the key with this id or display prefix (``creme_`` and ``key:`` forms accepted); committed.

    Revoking a revoked key changes nothing. Raises :class:`NotFoundError`, or :class:`ConflictError`
    when a prefix names several keys.
    """
    ref = key_id_or_prefix.strip()
    for lead in (KEY_PREFIX, "key:"):
        if ref.startswith(lead):
            ref = ref[len(lead) :]
    matches = list(session.scalars(select(ApiKey).where(or_(ApiKey.id == ref, ApiKey.prefix == ref))))
    if not matches:
        raise NotFoundError(f"no API key with id or prefix {key_id_or_prefix!r}")
    if len(matches) > 1:
        raise ConflictError(f"{len(matches)} keys have prefix {ref!r}; revoke by id")
    key = matches[0]
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return key


def has_active_keys(session: Session) -> bool:
    """Whether at least one key is not revoked."""
    return session.scalar(select(ApiKey.id).where(ApiKey.revoked_at.is_(None)).limit(1)) is not None


def auth_required(session: Session, require_auth: bool) -> bool:
    """Authentication is required when configured so, or as soon as an active key exists."""
    return require_auth or has_active_keys(session)


def authenticate(session: Session, token: str) -> ApiKey | None:
    """The active key whose secret is ``token``, or None; records its use at most once a minute.

    The key is found by the sha256 of ``token``, so the lookup's timing says nothing about the
    secret; the digests are compared once more in constant time.
    """
    if not token.startswith(KEY_PREFIX) or len(token) > MAX_TOKEN_CHARS:
        return None
    digest = hash_key(token)
    stmt = select(ApiKey).where(ApiKey.key_hash == digest).execution_options(populate_existing=True)
    key = session.scalars(stmt).one_or_none()
    if key is None or not hmac.compare_digest(key.key_hash, digest) or key.revoked_at is not None:
        return None
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(
            update(ApiKey)
            .where(
                ApiKey.id == key.id,
                or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_RESOLUTION),
            )
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        session.commit()
        set_committed_value(key, "last_used_at", now)
    return key


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) reaches only this machine."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind_allowed(host: str, session_factory: sessionmaker[Session], *, require_auth: bool = False) -> None:
    """Raise :class:`BindRefused` when ``host`` is not loopback and nothing would require a key."""
    if is_loopback(host) or require_auth:
        return
    with session_factory() as session:
        if has_active_keys(session):
            return
    raise BindRefused(
        f"refusing to serve on {host}: no API key exists, so anyone who can reach it could edit the model. "
        "Create one with `creme keys create NAME --scope edit`, set CREME_REQUIRE_AUTH=true, "
        "or bind 127.0.0.1."
    )
