"""Alembic migrations of the kanban database.

:func:`upgrade` is what the service runs on start and what the operator
command ``longshore db upgrade`` runs: it brings any database URL to the
newest revision. Two processes upgrading one PostgreSQL at once are
serialized by an advisory lock inside ``env.py``.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from services.kanban.db import normalize_url, prepare_sqlite_directory

MIGRATIONS_DIR = Path(__file__).resolve().parent


def alembic_config(database_url: str) -> Config:
    """Return an Alembic config for ``database_url`` without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    config.attributes["database_url"] = normalize_url(database_url)
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the database at ``database_url`` to ``revision``.

    Args:
        database_url: SQLAlchemy URL of the kanban database.
        revision: Target revision, ``head`` by default.
    """
    prepare_sqlite_directory(database_url)  # the first connection is Alembic's
    command.upgrade(alembic_config(database_url), revision)


def current(database_url: str) -> str | None:
    """Return the database's current revision, or None before the first."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(normalize_url(database_url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
