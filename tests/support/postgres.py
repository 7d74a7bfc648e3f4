"""A throwaway PostgreSQL 15 cluster for tests: ``postgres_url`` and ``fresh_postgres_db``.

The server refuses to run as root, so when the suite runs as root the cluster
is initialised and started as the ``postgres`` OS user, in a temp dir owned by
it, listening on a free loopback port with trust auth and fsync off.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.net import free_port

log = logging.getLogger(__name__)

PG_BIN = Path(os.environ.get("LONGSHORE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
DEFAULT_DATABASE = "longshore_test"


def ensure_postgres_binaries(bin_dir: Path = PG_BIN) -> Path:
    """Return the directory holding ``initdb``/``pg_ctl``, installing postgresql-15 if needed.

    Raises:
        RuntimeError: They are missing and cannot be installed here.
    """
    if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
        return bin_dir
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(
            f"PostgreSQL binaries missing in {bin_dir}: apt-get install postgresql-15"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql-15"], check=True, env=env)
    return bin_dir


class PostgresCluster:
    """One throwaway cluster on ``127.0.0.1:<port>``.

    Args:
        port: TCP port to listen on; a free one when omitted.
        bin_dir: Where ``initdb`` and ``pg_ctl`` live.
    """

    def __init__(self, port: int | None = None, bin_dir: Path = PG_BIN) -> None:
        self.port = port or free_port()
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="longshore-pg-"))
        self.data_dir = self.root / "data"
        self.log_path = self.root / "server.log"
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        self.started = False

    def url(self, database: str = DEFAULT_DATABASE) -> str:
        """The SQLAlchemy URL of ``database`` on this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def conninfo(self, database: str = "postgres") -> str:
        """A libpq connection string for psycopg."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _run(self, *args: str) -> None:
        proc = subprocess.run(
            list(args),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **self._run_as,
        )
        if proc.returncode != 0:
            server_log = self.log_path.read_text() if self.log_path.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                f"{server_log[-2000:]}"
            )

    def start(self) -> None:
        """``initdb`` then ``pg_ctl start``; wait until it accepts connections."""
        ensure_postgres_binaries(self.bin_dir)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "-E", "UTF8",
            "--locale=C",
        )  # fmt: skip
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self.root} -F "
            "-c full_page_writes=off -c synchronous_commit=off -c max_connections=200"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D", str(self.data_dir),
            "-l", str(self.log_path),
            "-o", options,
            "-w", "-t", "60",
            "start",
        )  # fmt: skip
        self.started = True

    def stop(self) -> None:
        """``pg_ctl stop -m immediate`` and remove the cluster's directory."""
        try:
            if self.started:
                self._run(
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "immediate",
                    "stop",
                )
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions first."""
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running throwaway cluster for the session, stopped and deleted at the end."""
    cluster = PostgresCluster()
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        pytest.fail(f"could not start a throwaway PostgreSQL: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_cluster: PostgresCluster) -> str:
    """SQLAlchemy URL (``postgresql+psycopg://...``) of an empty session database."""
    return postgres_cluster.create_database(DEFAULT_DATABASE)


@pytest.fixture
def fresh_postgres_db(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """SQLAlchemy URL of a new empty database for this test; dropped afterwards."""
    name = f"t_{secrets.token_hex(6)}"
    url = postgres_cluster.create_database(name)
    yield url
    with contextlib.suppress(psycopg.Error):
        postgres_cluster.drop_database(name)
