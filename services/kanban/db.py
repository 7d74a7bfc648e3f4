"""Engine and transactions for the kanban database (SQLite or PostgreSQL).

SQLite keeps one writer: every write transaction starts with ``BEGIN
IMMEDIATE`` (WAL mode, a busy timeout), so there is no "database is locked"
upgrade failure mid-transaction, and a cap counted inside a write transaction
is exact because nothing else writes until it commits.

PostgreSQL has no global write lock: writes of every replica run side by
side (READ COMMITTED) and lock only what they protect. A claim locks the cap
domain it spends (:mod:`services.kanban.store.claims`) and the task rows it
takes; every other write takes row locks. Event ids are no longer committed in
id order, so WatchEvents reads up to a watermark below which every id is
settled (:mod:`services.kanban.store.events`). Reads never lock.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from services.kanban import commits, notifications
from services.kanban.commits import Commit
from services.kanban.store import EFFECTS, Effects

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: A pooled PostgreSQL connection idle at least this long is pinged before use.
IDLE_PING_SECONDS = 1.0
_IDLE_SINCE = "longshore_idle_since"
_READONLY = "longshore_readonly"


def normalize_url(url: str) -> str:
    """Return ``url`` with PostgreSQL URLs pinned to the psycopg 3 driver.

    Args:
        url: A SQLAlchemy database URL, e.g. ``postgresql://u@h/db`` or
            ``sqlite:////path/kanban.db``.

    Returns:
        The URL to pass to :func:`sqlalchemy.create_engine`.
    """
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def default_url(home: Path) -> str:
    """Return the default database URL: a SQLite file under ``home``."""
    return f"sqlite:///{home / 'kanban.db'}"


def prepare_sqlite_directory(url: str) -> None:
    """Create the directory of a SQLite database file when it is missing.

    SQLite creates the file but not its directory, and the default one is
    ``LONGSHORE_HOME``, which holds secrets (the CLI's key) too: a directory
    made here is private to its owner (0700). Other URLs are left alone.

    Args:
        url: The database URL (any backend).
    """
    parsed = make_url(normalize_url(url))
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    directory = Path(parsed.database).expanduser().parent
    if not directory.is_dir():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below decide how each transaction starts.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        readonly = conn.get_execution_options().get(_READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def _install_idle_ping(engine: Engine) -> None:
    """Ping a pooled connection before use, but only one that sat idle.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: a round trip per
    transaction, and a create is only six of them. A connection handed back
    less than :data:`IDLE_PING_SECONDS` ago has just served a statement, so
    it is used as it is; one idle longer (where a database restart or an
    idle timeout hides) is pinged, and a failed ping makes the pool discard it
    and connect anew, as with ``pool_pre_ping``. A connection that breaks
    within the window fails its first statement instead, which SQLAlchemy
    reports as a disconnect and answers by emptying the pool; the callers
    that must not lose a write retry it (``run_sink``), the rest fail that
    one call, as they would with a ping when the break comes mid-transaction.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn: Any, record: Any) -> None:
        if record is not None:
            record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < IDLE_PING_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as err:
            raise DisconnectionError(f"pooled connection failed its ping: {err}") from err


def make_engine(url: str, *, instrument: bool = True) -> Engine:
    """Create an engine for ``url`` with the backend's safety settings.

    Args:
        url: SQLAlchemy URL (``sqlite:///...`` or ``postgresql+psycopg://...``).
        instrument: Attach the OpenTelemetry SQLAlchemy instrumentation.

    Returns:
        The engine.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        prepare_sqlite_directory(url)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=8,
            max_overflow=16,
        )
        _install_sqlite_hooks(engine)
    else:
        engine = create_engine(url, pool_size=8, max_overflow=24)
        _install_idle_ping(engine)
    if instrument:
        try:
            from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

            SQLAlchemyInstrumentor().instrument(engine=engine)
        except Exception:  # instrumentation must never stop the service
            log.warning("sqlalchemy instrumentation unavailable", exc_info=True)
    return engine


#: ``SELECT pg_notify(...)`` for one and for two channels, by how many.
_NOTIFY = {
    1: text("SELECT pg_notify(:c0, :p0)"),
    2: text("SELECT pg_notify(:c0, :p0), pg_notify(:c1, :p1)"),
}


class Database:
    """Sessions on one engine: exclusive write transactions and plain reads.

    Args:
        engine: The engine from :func:`make_engine`.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        self._writes = sessionmaker(engine, expire_on_commit=False)
        # PostgreSQL reads run in autocommit: under read committed every
        # statement takes its own snapshot anyway, so a transaction around a
        # read bought nothing but its BEGIN and ROLLBACK, two round trips of
        # every read call (GetTask: 5 -> 3).
        reads: dict[str, object] = {_READONLY: True}
        if self.dialect == "postgresql":
            reads["isolation_level"] = "AUTOCOMMIT"
        self._reads = sessionmaker(engine.execution_options(**reads), expire_on_commit=False)
        self._listeners: list[Callable[[Commit], None]] = []
        self._appliers: list[Callable[[Effects], None]] = []
        #: Names this process in its NOTIFY payloads, so it skips its own.
        self.origin = secrets.token_hex(6)
        self._lock = threading.Lock()
        # SQLite admits one writer; a second BEGIN IMMEDIATE does not queue but
        # polls in SQLite's busy handler, which sleeps up to 100 ms between
        # tries, so under 8 concurrent writers the unlucky ones wait hundreds of
        # ms after the lock is free. Queueing this process's writers on a
        # Python lock first hands the database over at once; the busy timeout
        # still covers writers in other processes.
        self._sqlite_writer = threading.Lock() if self.dialect == "sqlite" else None

    @property
    def is_postgres(self) -> bool:
        """Whether the backend is PostgreSQL."""
        return self.dialect == "postgresql"

    def on_commit(self, listener: Callable[[Commit], None]) -> None:
        """Call ``listener`` with what changed after every committed write transaction.

        It runs on the committing thread, after the commit and outside every
        lock, so it must be quick (the event bus only schedules wake-ups).
        """
        with self._lock:
            self._listeners.append(listener)

    def on_effects(self, applier: Callable[[Effects], None]) -> None:
        """Hand every committed transaction's ``store.effects_of`` to ``applier``."""
        with self._lock:
            self._appliers.append(applier)

    @contextmanager
    def write(self) -> Iterator[Session]:
        """Open a write transaction; commit on success.

        On SQLite it is exclusive from its first statement; on PostgreSQL it
        takes only the locks its store functions take (rows, cap domains, the
        shared event gate).

        Yields:
            A session inside the transaction; store functions only flush.
        """
        with self._writer(), self._writes.begin() as session:
            yield session
            # Read the store's marks while the session still holds its objects.
            commit = commits.of(session)
            self._notify(session, commit)
        self._committed(session, commit)

    def _committed(self, session: Session, commit: Commit) -> None:
        """After a commit (the one place): tell the listeners, then apply the effects.

        Reached only when the transaction committed: an exception inside
        ``write()`` rolls back and skips both, so a rolled-back move never
        kills an exec or releases a sandbox.
        """
        for listener in list(self._listeners):
            listener(commit)
        effects = session.info.get(EFFECTS)
        if isinstance(effects, Effects):
            for applier in list(self._appliers):
                applier(effects)

    @contextmanager
    def _writer(self) -> Iterator[None]:
        """Hold this process's SQLite writer slot (a no-op on PostgreSQL)."""
        if self._sqlite_writer is None:
            yield
            return
        # Bounded like the busy timeout: should a writer ever wait on itself
        # (a nested write), fall through to SQLite, which then fails as before.
        held = self._sqlite_writer.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        try:
            yield
        finally:
            if held:
                self._sqlite_writer.release()

    @contextmanager
    def read(self) -> Iterator[Session]:
        """Open a read-only session (its transaction is rolled back on close).

        Yields:
            A session for reads.
        """
        with self._reads() as session:
            yield session

    def _notify(self, session: Session, commit: Commit) -> None:
        """Tell the other replicas (PostgreSQL NOTIFY) what this transaction changes.

        Sent inside the transaction: PostgreSQL delivers it when, and only
        if, the transaction commits, so a listener never reads too early.
        """
        if not self.is_postgres:
            return
        sends: list[tuple[str, str]] = []
        if commit.added_events or commit.profiles:
            sends.append(
                (notifications.EVENTS_CHANNEL, notifications.payload(self.origin, commit.profiles))
            )
        if commit.output_runs:
            sends.append(
                (
                    notifications.OUTPUT_CHANNEL,
                    notifications.payload(self.origin, commit.output_runs),
                )
            )
        if sends:
            # One round trip for both channels (a commit with events usually has both).
            params: dict[str, str] = {}
            for i, (channel, payload) in enumerate(sends):
                params[f"c{i}"], params[f"p{i}"] = channel, payload
            session.execute(_NOTIFY[len(sends)], params)

    def listen_url(self) -> str:
        """The database URL in the form psycopg connects with (for LISTEN)."""
        url = self.engine.url.set(drivername="postgresql")
        return url.render_as_string(hide_password=False)

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
