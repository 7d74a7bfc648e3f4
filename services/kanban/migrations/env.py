"""Alembic environment: run migrations on the URL given by the caller."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from services.kanban.models import Base

MIGRATION_LOCK_KEY = 0x4C6F6E68


def run_migrations_online() -> None:
    """Run the migrations with a live connection."""
    url = context.config.attributes["database_url"]
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # Replicas starting together upgrade one after the other.
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
                connection.commit()
            try:
                context.configure(
                    connection=connection,
                    target_metadata=Base.metadata,
                    render_as_batch=connection.dialect.name == "sqlite",
                )
                with context.begin_transaction():
                    context.run_migrations()
            finally:
                if connection.dialect.name == "postgresql":
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY}
                    )
                    connection.commit()
    finally:
        engine.dispose()


run_migrations_online()
