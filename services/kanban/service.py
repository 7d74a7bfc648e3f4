"""Assembly of the kanban service's parts, shared by ``__main__`` and tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from grpc import aio
from longshore.kanban.v1 import (
    kanban_service_pb2,
    kanban_service_pb2_grpc,
    worker_service_pb2,
    worker_service_pb2_grpc,
)
from opentelemetry.metrics import Meter

from services.kanban.backends import BackendBreaker
from services.kanban.db import Database, default_url, make_engine
from services.kanban.events_bus import EventBus
from services.kanban.handler_pool import HandlerPool
from services.kanban.metrics import KanbanMetrics
from services.kanban.migrations import upgrade
from services.kanban.models import utcnow
from services.kanban.server import KanbanServicer
from services.kanban.settings import DispatchLimits, KanbanSettings
from services.kanban.spec_checks import SpecChecks
from services.kanban.store import tasks
from services.kanban.tick import Dispatcher, RunStarter
from services.kanban.warm_pools import WarmPools
from services.kanban.worker_server import WorkerServicer
from services.runtime.aio_serving import AioService
from services.runtime.channels import open_channel
from services.runtime.sandbox_tokens import SandboxTokens

_KANBAN = kanban_service_pb2.DESCRIPTOR.services_by_name["KanbanService"]
_WORKER = worker_service_pb2.DESCRIPTOR.services_by_name["WorkerService"]


@dataclass
class KanbanApp:
    """A kanban process's parts: database, event bus, dispatcher, servicers, handler pool."""

    db: Database
    bus: EventBus
    dispatcher: Dispatcher
    kanban: KanbanServicer
    worker: WorkerServicer
    pool: HandlerPool
    #: Keeps the sandbox manager's warm pools in step with the profiles.
    warm_pools: WarmPools
    owned_channels: list[grpc.Channel] = field(default_factory=list)

    def grpc_services(self) -> list[AioService]:
        """The servicers to mount on a ``grpc.aio`` server (``build_aio_server``)."""
        kanban = self.pool.aio_face(self.kanban, _KANBAN)
        worker = self.pool.aio_face(self.worker, _WORKER)

        def register_kanban(server: aio.Server) -> None:
            # Registration runs on the server's loop: the bus delivers its
            # wake-ups there from now on, whoever commits.
            self.bus.bind(asyncio.get_running_loop())
            kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(kanban, server)

        return [
            AioService(_KANBAN.full_name, register_kanban),
            AioService(
                _WORKER.full_name,
                lambda s: worker_service_pb2_grpc.add_WorkerServiceServicer_to_server(worker, s),
            ),
        ]

    def start(self) -> None:
        """Start listening to the other replicas (PostgreSQL) and reconciling warm pools."""
        self.bus.start()
        self.warm_pools.start()

    def close(self) -> None:
        """Stop the loop, end streams and polls, stop the pool, close the database."""
        self.warm_pools.stop()
        self.dispatcher.stop()
        self.bus.close()
        self.pool.shutdown()
        self.db.dispose()
        for channel in self.owned_channels:
            channel.close()


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
    sandbox_channel: grpc.Channel | None = None,
    backend: BackendBreaker | None = None,
    meter: Meter | None = None,
) -> KanbanApp:
    """Build (and migrate) a kanban process from its settings.

    Args:
        settings: The service's settings.
        executor: The sandbox executor, or None.
        migrate: Upgrade the database to the newest revision first.
        instance: This process's id; random by default.
        instrument: Attach the OTel SQLAlchemy instrumentation when
            ``database.trace_statements`` asks for it (tests pass False).
        clock: The dispatcher's "now" (tests inject one).
        sandbox_channel: A channel to the sandbox manager for spec checks;
            by default one to ``settings.sandbox.addr`` is opened (it
            connects lazily, so kanban starts while the manager is down) and
            closed with the app.
        backend: The sandbox backend's breaker for the dispatcher, or None.
        meter: Where the dispatcher and the worker service record (tick
            durations, buckets, claims, queue depth); None = nothing recorded.

    Returns:
        The parts, not yet started.
    """
    url = database_url(settings)
    if migrate:
        upgrade(url)
    db = Database(make_engine(url, instrument=instrument and settings.database.trace_statements))
    # On PostgreSQL the other replicas' commits arrive by LISTEN/NOTIFY.
    bus = EventBus(db, listen=db.is_postgres)
    pool = HandlerPool(settings.kanban.max_workers)

    def queue_depth() -> dict[str, int]:
        with db.read() as s:
            return tasks.ready_counts(s)

    metrics = KanbanMetrics(meter, queue_depth=queue_depth) if meter is not None else None
    limits = DispatchLimits.from_section(settings.kanban)
    dispatcher = Dispatcher(
        db,
        section=settings.kanban,
        limits=limits,
        executor=executor,
        instance=instance or secrets.token_hex(6),
        clock=clock,
        backend=backend,
        metrics=metrics,
    )
    owned: list[grpc.Channel] = []
    if sandbox_channel is None:
        sandbox_channel = open_channel(
            settings.sandbox.addr, internal_token=settings.internal_token or None
        )
        owned.append(sandbox_channel)
    # Without an internal credential the sandbox manager verifies no tokens
    # (it cannot: they are signed with that credential), so none are minted.
    tokens = SandboxTokens(settings.internal_token) if settings.internal_token else None
    warm_pools = WarmPools(
        sandbox_channel, db, interval_seconds=settings.kanban.warm_pool_sync_seconds
    )
    return KanbanApp(
        db=db,
        bus=bus,
        dispatcher=dispatcher,
        kanban=KanbanServicer(
            db,
            bus,
            dispatcher,
            spec_checks=SpecChecks(sandbox_channel),
            pool=pool,
            warm_pools=warm_pools,
        ),
        worker=WorkerServicer(
            db,
            bus,
            dispatcher,
            section=settings.kanban,
            limits=limits,
            tokens=tokens,
            deployment=settings.deployment,
            pool=pool,
            metrics=metrics,
        ),
        pool=pool,
        warm_pools=warm_pools,
        owned_channels=owned,
    )
