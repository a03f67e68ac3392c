"""Migrations build exactly what the models declare, on SQLite and Postgres."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, insert, inspect, select

from service.db import Base, Edit, Job, ModelState, Worker, make_engine, utcnow
from service.db.migrate import current_revision, downgrade, head_revision, script_location, upgrade
from service.engine.inputs import EMBEDDED_MODEL


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _diffs(url: str, metadata: MetaData) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_script_location_is_the_migrations_package() -> None:
    assert (script_location() / "env.py").is_file()
    assert (script_location() / "script.py.mako").is_file()
    assert head_revision() == "0005"


def test_upgrade_from_empty_creates_all_tables(empty_url: str) -> None:
    assert current_revision(empty_url) is None
    assert _tables(empty_url) == set()

    upgrade(empty_url)

    assert _tables(empty_url) == set(Base.metadata.tables) | {"alembic_version"}
    assert set(Base.metadata.tables) == {
        "edits",
        "edit_deltas",
        "model_state",
        "state_events",
        "jobs",
        "workers",
        "api_keys",
    }
    assert current_revision(empty_url) == head_revision()


def test_upgrade_is_idempotent(db_url: str) -> None:
    upgrade(db_url)
    assert current_revision(db_url) == head_revision()


def test_models_and_migrations_agree(db_url: str) -> None:
    assert _diffs(db_url, Base.metadata) == []


def test_comparison_detects_a_drift(db_url: str) -> None:
    """The agreement check has teeth: an extra model column shows up as a difference."""
    drifted = MetaData(naming_convention=dict(Base.metadata.naming_convention))
    for table in Base.metadata.tables.values():
        copy = table.to_metadata(drifted)
        if table.name == "jobs":
            copy.append_column(Column("priority", Integer, nullable=True))
    diffs = _diffs(db_url, drifted)
    assert [d[0] for d in diffs if isinstance(d, tuple)] == ["add_column"]


def test_0003_adds_the_depth_workers_register_and_keeps_their_rows(empty_url: str) -> None:
    upgrade(empty_url, "0002")
    engine = make_engine(empty_url)
    try:
        row = {"id": "w1", "host": "h", "base_model": "m", "model_fingerprint": "f", "state_version": 0}
        with engine.begin() as conn:
            conn.execute(insert(Worker.__table__).values(**row, status="idle", last_heartbeat=utcnow()))
        assert "n_layers" not in {c["name"] for c in inspect(engine).get_columns("workers")}

        upgrade(empty_url, "0003")
        [column] = [c for c in inspect(engine).get_columns("workers") if c["name"] == "n_layers"]
        assert column["nullable"]
        with engine.connect() as conn:  # a worker from before 0003 has not told its depth
            assert conn.execute(select(Worker.id, Worker.n_layers)).all() == [("w1", None)]

        downgrade(empty_url, "0002")
        assert "n_layers" not in {c["name"] for c in inspect(engine).get_columns("workers")}
        with engine.connect() as conn:
            assert conn.execute(select(Worker.__table__.c.id)).scalars().all() == ["w1"]
    finally:
        engine.dispose()


def _edit_row(edit_id: str, bridge: str | None, answer: str | None) -> dict[str, object]:
    return {
        "id": edit_id,
        "status": "pending",
        "prompt": "p",
        "hop1_phrase": "p",
        "bridge": bridge,
        "answer": answer,
        "request": {},
        "layers": [],
        "method": "auto",
        "apply_policy": "if_safe",
        "base_model": "m",
        "base_fingerprint": "",
        "created_at": utcnow(),
        "updated_at": utcnow(),
    }


def test_0004_lets_bridge_and_answer_wait_for_inference_and_keeps_the_edits(empty_url: str) -> None:
    upgrade(empty_url, "0003")
    engine = make_engine(empty_url)
    edits = Edit.__table__
    try:
        with engine.begin() as conn:
            conn.execute(insert(edits).values(**_edit_row("given", "Japan", "Tokyo")))
        assert not any(c["nullable"] for c in inspect(engine).get_columns("edits") if c["name"] in ("bridge", "answer"))

        upgrade(empty_url, "0004")
        assert all(c["nullable"] for c in inspect(engine).get_columns("edits") if c["name"] in ("bridge", "answer"))
        with engine.begin() as conn:  # a request without them: NULL until the worker infers them
            conn.execute(insert(edits).values(**_edit_row("inferred", None, None)))
            rows = conn.execute(select(edits.c.id, edits.c.bridge, edits.c.answer).order_by(edits.c.id)).all()
        assert rows == [("given", "Japan", "Tokyo"), ("inferred", None, None)]

        downgrade(empty_url, "0003")  # values never inferred become empty texts
        assert not any(c["nullable"] for c in inspect(engine).get_columns("edits") if c["name"] in ("bridge", "answer"))
        with engine.connect() as conn:
            rows = conn.execute(select(edits.c.id, edits.c.bridge, edits.c.answer).order_by(edits.c.id)).all()
        assert rows == [("given", "Japan", "Tokyo"), ("inferred", "", "")]
    finally:
        engine.dispose()


def _job_row(job_id: str, kind: str) -> dict[str, object]:
    return {"id": job_id, "kind": kind, "payload": {}, "status": "queued", "progress": {}, "created_at": utcnow()}


def test_0005_gives_every_job_its_model_and_keeps_the_rows(empty_url: str) -> None:
    upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    jobs, edits = Job.__table__, Edit.__table__
    try:
        with engine.begin() as conn:
            conn.execute(insert(edits).values(**{**_edit_row("e1", "Japan", "Tokyo"), "job_id": "j-edit"}))
            for job_id, kind in (("j-edit", "edit"), ("j-lens", "logit-lens")):
                conn.execute(insert(jobs).values(**_job_row(job_id, kind)))
            conn.execute(insert(ModelState.__table__).values(base_model="m-state", version=1, active_edit_ids=[]))
            row = {"id": "w1", "host": "h", "base_model": "m-worker", "model_fingerprint": "f", "state_version": 0}
            conn.execute(insert(Worker.__table__).values(**row, status="idle", last_heartbeat=utcnow()))

        upgrade(empty_url, "0005")
        with engine.connect() as conn:  # an edit's job takes its edit's model; another job the newest state's
            rows = conn.execute(select(jobs.c.id, jobs.c.base_model).order_by(jobs.c.id)).all()
            assert rows == [("j-edit", "m"), ("j-lens", "m-state")]
            assert conn.execute(select(Worker.family, Worker.dtype, Worker.pristine_bytes)).all() == [
                (None, None, None)
            ]
        [column] = [c for c in inspect(engine).get_columns("jobs") if c["name"] == "base_model"]
        assert not column["nullable"]
        indexes = {i["name"] for i in inspect(engine).get_indexes("edits")}
        assert {"ix_edits_created_at_id", "ix_edits_base_model_created_at_id"} <= indexes

        downgrade(empty_url, "0004")
        assert "base_model" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        with engine.connect() as conn:
            assert conn.execute(select(jobs.c.id).order_by(jobs.c.id)).scalars().all() == ["j-edit", "j-lens"]
    finally:
        engine.dispose()


def test_0005_falls_back_to_the_last_worker_then_the_embedded_model(empty_url: str) -> None:
    upgrade(empty_url, "0004")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Job.__table__).values(**_job_row("j1", "generate")))
        upgrade(empty_url, "0005")
        with engine.connect() as conn:
            assert conn.execute(select(Job.base_model)).scalars().all() == [EMBEDDED_MODEL]
        downgrade(empty_url, "0004")
        with engine.begin() as conn:
            row = {"id": "w1", "host": "h", "base_model": "m-worker", "model_fingerprint": "f", "state_version": 0}
            conn.execute(insert(Worker.__table__).values(**row, status="idle", last_heartbeat=utcnow()))
        upgrade(empty_url, "0005")
        with engine.connect() as conn:
            assert conn.execute(select(Job.base_model)).scalars().all() == ["m-worker"]
    finally:
        engine.dispose()


def test_downgrade_to_base_then_upgrade_again(db_url: str) -> None:
    downgrade(db_url, "base")
    assert _tables(db_url) == {"alembic_version"}
    assert current_revision(db_url) is None

    upgrade(db_url)
    assert _diffs(db_url, Base.metadata) == []


def test_upgrade_through_an_engine_for_in_memory_sqlite() -> None:
    engine = make_engine("sqlite://")
    try:
        upgrade("sqlite://", engine=engine)
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert context.get_current_revision() == head_revision()
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
