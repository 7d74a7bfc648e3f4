"""Assembly of the kanban service's parts, shared by ``__main__`` and tests."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from longshore.kanban.v1 import kanban_service_pb2_grpc, worker_service_pb2_grpc

from services.kanban.db import Database, default_url, make_engine
from services.kanban.events_bus import EventBus
from services.kanban.migrations import upgrade
from services.kanban.models import utcnow
from services.kanban.server import KanbanServicer
from services.kanban.settings import DispatchLimits, KanbanSettings
from services.kanban.tick import Dispatcher, RunStarter
from services.kanban.worker_server import WorkerServicer
from services.runtime.serving import GrpcService

PG_EVENT_POLL_SECONDS = 0.2


@dataclass
class KanbanApp:
    """A kanban process's parts: database, event bus, dispatcher, servicers."""

    db: Database
    bus: EventBus
    dispatcher: Dispatcher
    kanban: KanbanServicer
    worker: WorkerServicer

    def grpc_services(self) -> list[GrpcService]:
        """The servicers to mount."""
        return [
            GrpcService(
                "longshore.kanban.v1.KanbanService",
                lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(
                    self.kanban, s
                ),
            ),
            GrpcService(
                "longshore.kanban.v1.WorkerService",
                lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(
                    self.worker, s
                ),
            ),
        ]

    def start(self) -> None:
        """Start the event poller and, when enabled, the dispatcher loop."""
        self.bus.start()

    def close(self) -> None:
        """Stop the loop, end streams, close the database."""
        self.dispatcher.stop()
        self.bus.close()
        self.db.dispose()


def database_url(settings: KanbanSettings) -> str:
    """The configured database URL, or the default SQLite file under home."""
    return settings.database.url or default_url(settings.home)


def build_app(
    settings: KanbanSettings,
    *,
    executor: RunStarter | None,
    migrate: bool = True,
    instance: str | None = None,
    instrument: bool = True,
    clock: Callable[[], dt.datetime] = utcnow,
) -> KanbanApp:
    """Build (and migrate) a kanban process from its settings.

    Args:
        settings: The service's settings.
        executor: The sandbox executor, or None.
        migrate: Upgrade the database to the newest revision first.
        instance: This process's id; random by default.
        instrument: Attach the OTel SQLAlchemy instrumentation.
        clock: The dispatcher's "now" (tests inject one).

    Returns:
        The parts, not yet started.
    """
    url = database_url(settings)
    if migrate:
        upgrade(url)
    db = Database(make_engine(url, instrument=instrument))
    bus = EventBus(db, poll_interval=PG_EVENT_POLL_SECONDS if db.is_postgres else None)
    limits = DispatchLimits.from_section(settings.kanban)
    dispatcher = Dispatcher(
        db,
        section=settings.kanban,
        limits=limits,
        executor=executor,
        instance=instance or secrets.token_hex(6),
        clock=clock,
    )
    return KanbanApp(
        db=db,
        bus=bus,
        dispatcher=dispatcher,
        kanban=KanbanServicer(db, bus, dispatcher),
        worker=WorkerServicer(db, bus, dispatcher, section=settings.kanban, limits=limits),
    )
