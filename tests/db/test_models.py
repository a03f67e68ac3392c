"""Models round-trip the same way on SQLite and Postgres; the engine and session helpers behave."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.db import ApiKey, Edit, Job, StoredDelta, Worker, make_engine, session_scope, utcnow
from tests.db.helpers import add_edit


def test_utcnow_is_aware_utc() -> None:
    now = utcnow()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_sqlite_engine_pragmas(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 5000
    finally:
        engine.dispose()


def test_memory_sqlite_shares_one_connection() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 0
    finally:
        engine.dispose()


def test_edit_defaults_and_round_trip(session: Session, factory: sessionmaker[Session]) -> None:
    edit_id = add_edit(session, status="pending")
    with factory() as other:
        edit = other.get(Edit, edit_id)
        assert edit is not None
        assert len(edit.id) == 36
        assert edit.method == "auto"
        assert edit.apply_policy == "if_safe"
        assert edit.layers == [4, 5]
        assert edit.request["specificity"] == []
        assert edit.created_at.tzinfo is not None and edit.created_at.utcoffset() == timedelta(0)
        assert edit.applied_at is None and edit.metrics is None
        assert other.scalar(select(Edit.id).where(Edit.metrics.is_(None))) == edit_id


def test_datetimes_are_stored_as_utc(session: Session, factory: sessionmaker[Session]) -> None:
    tokyo = timezone(timedelta(hours=9))
    local = datetime(2025, 1, 2, 9, 30, tzinfo=tokyo)
    job = Job(kind="locate", base_model="m", payload={}, lease_expires_at=local)
    session.add(job)
    session.commit()
    with factory() as other:
        stored = other.get(Job, job.id)
        assert stored is not None and stored.lease_expires_at is not None
        assert stored.lease_expires_at == datetime(2025, 1, 2, 0, 30, tzinfo=UTC)
        assert stored.lease_expires_at.utcoffset() == timedelta(0)
        # Comparisons in SQL work on both backends.
        cutoff = datetime(2025, 1, 2, 1, 0, tzinfo=UTC)
        assert other.scalar(select(Job.id).where(Job.lease_expires_at < cutoff)) == job.id
        assert other.scalar(select(Job.id).where(Job.lease_expires_at > cutoff)) is None


def test_job_defaults(session: Session) -> None:
    job = Job(kind="edit", base_model="m", payload={"edit_id": "x"})
    session.add(job)
    session.commit()
    session.expire_all()
    assert job.status == "queued"
    assert job.attempts == 0 and job.max_attempts == 3
    assert job.cancel_requested is False
    assert job.progress == {"step": 0, "total": None, "message": "queued"}
    assert job.result is None and job.error is None and job.idempotency_key is None


def test_job_idempotency_key_is_unique(session: Session) -> None:
    session.add_all(
        [Job(kind="edit", base_model="m", payload={}), Job(kind="edit", base_model="m", payload={})]
    )  # NULLs may repeat
    session.add(Job(kind="edit", base_model="m", payload={}, idempotency_key="k1", request_hash="h"))
    session.commit()
    session.add(Job(kind="score", base_model="m", payload={}, idempotency_key="k1"))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_api_key_hash_is_unique(session: Session) -> None:
    session.add(ApiKey(name="a", key_hash="a" * 64, prefix="crm_abcd", scopes=["read"]))
    session.commit()
    session.add(ApiKey(name="b", key_hash="a" * 64, prefix="crm_efgh", scopes=["admin"]))
    with pytest.raises(IntegrityError):
        session.commit()
    session.rollback()


def test_worker_round_trip(session: Session) -> None:
    session.add(
        Worker(
            id="host-1",
            host="host",
            base_model="m",
            model_fingerprint="fp",
            state_version=3,
            status="idle",
        )
    )
    session.commit()
    session.expire_all()
    worker = session.get(Worker, "host-1")
    assert worker is not None and worker.state_version == 3 and worker.weights_checksum is None
    assert worker.last_heartbeat.utcoffset() == timedelta(0)


def test_delta_bytes_and_cascade(session: Session, engine: Engine) -> None:
    edit_id = add_edit(session)
    session.expire_all()
    delta = session.get(StoredDelta, edit_id)
    assert delta is not None and delta.data == b"\x00" * 16 and delta.shapes == {"4.u": [576]}
    # Deleting the edit row in SQL removes its delta (ON DELETE CASCADE, foreign keys on in SQLite).
    session.close()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM edits WHERE id = :id"), {"id": edit_id})
        assert conn.execute(text("SELECT count(*) FROM edit_deltas")).scalar() == 0


def test_session_scope_commits_and_rolls_back(factory: sessionmaker[Session]) -> None:
    with session_scope(factory) as s:
        s.add(Job(id="kept", kind="generate", base_model="m", payload={}))
    with pytest.raises(RuntimeError), session_scope(factory) as s:
        s.add(Job(id="dropped", kind="generate", base_model="m", payload={}))
        s.flush()
        raise RuntimeError("boom")
    with factory() as s:
        assert s.get(Job, "kept") is not None
        assert s.get(Job, "dropped") is None
