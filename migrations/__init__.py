"""Alembic migrations of the CREME service database (run them with ``service.db.migrate``)."""
