"""The throwaway PostgreSQL cluster fixtures."""

from __future__ import annotations

import sqlalchemy as sa


def test_postgres_url_accepts_queries(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert postgres_url.endswith("/longshore_test")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            conn.execute(sa.text("CREATE TABLE IF NOT EXISTS harness_probe (id int)"))
            conn.execute(sa.text("INSERT INTO harness_probe VALUES (1)"))
            assert conn.execute(sa.text("SELECT count(*) FROM harness_probe")).scalar_one() >= 1
            assert conn.execute(sa.text("SHOW fsync")).scalar_one() == "off"
        assert str(version).startswith("15")
    finally:
        engine.dispose()


def test_fresh_postgres_db_is_empty_and_separate(postgres_url: str, fresh_postgres_db: str) -> None:
    assert fresh_postgres_db != postgres_url
    engine = sa.create_engine(fresh_postgres_db)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                sa.text("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            ).scalar_one()
        assert tables == 0
    finally:
        engine.dispose()
