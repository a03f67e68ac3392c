"""Run the Alembic migrations programmatically (no ini file); ``creme migrate`` calls :func:`upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, pool

import migrations


def script_location() -> Path:
    """The directory of the installed ``migrations`` package (env.py, versions/)."""
    return Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    """An Alembic ``Config`` for ``database_url`` built in code."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    # Passed as an attribute, not an option, so '%' in passwords needs no configparser escaping.
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "head", *, engine: Engine | None = None) -> None:
    """Upgrade the database at ``database_url`` to ``revision`` (default: the latest).

    Pass ``engine`` to migrate through it instead of a fresh connection (needed for an in-memory
    SQLite database, which exists only inside its engine).
    """
    cfg = alembic_config(database_url)
    if engine is None:
        command.upgrade(cfg, revision)
        return
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the database at ``database_url`` to ``revision`` (``"base"`` drops everything)."""
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str | None:
    """The latest revision shipped with the code."""
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or ``None`` if it was never migrated."""
    engine = create_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
