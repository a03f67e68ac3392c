"""service.keys: keys stored only hashed, authentication, revocation, scopes, and the binding rule."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.db import ApiKey, Base, utcnow
from service.keys import (
    BindRefused,
    auth_required,
    authenticate,
    check_bind_allowed,
    create_key,
    has_active_keys,
    is_loopback,
    list_keys,
    normalize_scopes,
    revoke_key,
    scope_allows,
)
from service.usecases.errors import ConflictError, NotFoundError


def test_a_key_is_stored_only_as_its_hash(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        key, token = create_key(session, "ci", ["edit", "read"])
    assert token.startswith("creme_") and len(token) == len("creme_") + 43  # 32 bytes, URL-safe base64
    secret = token.removeprefix("creme_")
    with factory() as session:
        rows = session.execute(select(Base.metadata.tables["api_keys"])).all()
    assert len(rows) == 1
    row = rows[0]._mapping
    assert row["key_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["prefix"] == secret[:8] and len(row["prefix"]) == 8
    assert row["scopes"] == ["read", "edit"] and row["name"] == "ci" and row["revoked_at"] is None
    for value in row.values():  # neither the key nor its secret part beyond the display prefix is stored
        assert token not in str(value) and secret[:12] not in str(value)
    assert key.id == row["id"]


def test_keys_are_random(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        tokens = {create_key(session, f"k{i}", ["read"])[1] for i in range(5)}
        assert len(tokens) == 5
        assert len({k.prefix for k in list_keys(session)}) == 5


def test_no_display_prefix_starts_with_a_dash(factory: sessionmaker[Session]) -> None:
    """`creme keys revoke PREFIX` must not read a prefix as an option (1 in 64 random prefixes would)."""
    with factory() as session:
        prefixes = [create_key(session, f"k{i}", ["read"])[0].prefix for i in range(300)]
    assert not [p for p in prefixes if p.startswith("-")]


def test_create_refuses_unknown_or_no_scopes_and_blank_names(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        with pytest.raises(ValueError, match="unknown scope"):
            create_key(session, "x", ["read", "root"])
        with pytest.raises(ValueError, match="at least one scope"):
            create_key(session, "x", [])
        with pytest.raises(ValueError, match="name"):
            create_key(session, "  ", ["read"])
        assert list_keys(session) == []


def test_authenticate_accepts_the_key_and_nothing_else(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        key, token = create_key(session, "ci", ["read"])
    with factory() as session:
        found = authenticate(session, token)
        assert found is not None and found.id == key.id
        assert authenticate(session, token + "x") is None
        assert authenticate(session, token[:-1]) is None
        assert authenticate(session, token.removeprefix("creme_")) is None
        assert authenticate(session, "") is None
        assert authenticate(session, "creme_" + "a" * 5000) is None
        assert authenticate(session, hashlib.sha256(token.encode()).hexdigest()) is None  # the hash is no key


def test_a_revoked_key_fails(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        key, token = create_key(session, "ci", ["admin"])
        assert has_active_keys(session)
        revoked = revoke_key(session, key.id)
        assert revoked.revoked_at is not None
        assert authenticate(session, token) is None
        assert not has_active_keys(session)
        first = revoked.revoked_at
        assert revoke_key(session, key.id).revoked_at == first  # revoking again changes nothing


def test_last_used_is_recorded_at_most_once_a_minute(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        key, token = create_key(session, "ci", ["read"])
        assert key.last_used_at is None
    with factory() as session:
        used = authenticate(session, token)
        assert used is not None and used.last_used_at is not None
    with factory() as session:
        stamp = session.get(ApiKey, key.id).last_used_at  # type: ignore[union-attr]
        assert stamp is not None
        authenticate(session, token)
    with factory() as session:
        assert session.get(ApiKey, key.id).last_used_at == stamp  # type: ignore[union-attr]
        old = utcnow() - timedelta(minutes=5)
        session.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=old))
        session.commit()
    with factory() as session:
        authenticate(session, token)
    with factory() as session:
        later = session.get(ApiKey, key.id).last_used_at  # type: ignore[union-attr]
        assert later is not None and later > old + timedelta(minutes=4)


def test_revoke_by_id_or_display_prefix(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        a, _ = create_key(session, "a", ["read"])
        b, _ = create_key(session, "b", ["read"])
        c, _ = create_key(session, "c", ["read"])
        assert revoke_key(session, a.prefix).id == a.id
        assert revoke_key(session, f"creme_{b.prefix}").id == b.id
        assert revoke_key(session, f"key:{c.prefix}").id == c.id
        with pytest.raises(NotFoundError):
            revoke_key(session, "nope")
        assert [k.name for k in list_keys(session)] == ["a", "b", "c"]
        assert list_keys(session, include_revoked=False) == []


def test_an_ambiguous_prefix_is_refused(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        a, _ = create_key(session, "a", ["read"])
        b, _ = create_key(session, "b", ["read"])
        session.execute(update(ApiKey).where(ApiKey.id == b.id).values(prefix=a.prefix))
        session.commit()
        with pytest.raises(ConflictError, match="revoke by id"):
            revoke_key(session, a.prefix)
        assert revoke_key(session, b.id).revoked_at is not None


@pytest.mark.parametrize(
    ("scopes", "needed", "allowed"),
    [
        (["read"], "read", True),
        (["read"], "edit", False),
        (["edit"], "read", True),
        (["edit"], "edit", True),
        (["edit"], "admin", False),
        (["admin"], "read", True),
        (["admin"], "edit", True),
        (["admin"], "admin", True),
        ([], "read", False),
        (["bogus"], "read", False),
    ],
)
def test_scopes_imply_the_lower_ones(scopes: list[str], needed: str, allowed: bool) -> None:
    assert scope_allows(scopes, needed) is allowed


def test_scopes_are_normalised() -> None:
    assert normalize_scopes(["admin", "read", "admin"]) == ["read", "admin"]


def test_auth_is_required_once_an_active_key_exists_or_when_configured(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        assert not auth_required(session, False)
        assert auth_required(session, True)
        key, _ = create_key(session, "a", ["read"])
        assert auth_required(session, False)
        revoke_key(session, key.id)
        assert not auth_required(session, False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.1.1", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_binding_beyond_loopback_needs_a_key_or_require_auth(factory: sessionmaker[Session]) -> None:
    for host in ("127.0.0.1", "localhost", "::1"):
        check_bind_allowed(host, factory)
    with pytest.raises(BindRefused, match="creme keys create"):
        check_bind_allowed("0.0.0.0", factory)
    check_bind_allowed("0.0.0.0", factory, require_auth=True)
    with factory() as session:
        key, _ = create_key(session, "ops", ["admin"])
    check_bind_allowed("0.0.0.0", factory)
    with factory() as session:
        revoke_key(session, key.id)
    with pytest.raises(BindRefused):
        check_bind_allowed("::", factory)
