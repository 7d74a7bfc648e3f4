"""``python -m services.kanban``: wiring only (settings, database, dispatcher, server)."""

from __future__ import annotations

import logging
import sys

from services.kanban.backends import BackendBreaker
from services.kanban.db_health import DatabaseHealth
from services.kanban.executor import Executor
from services.kanban.sandbox_client import SandboxClient
from services.kanban.service import build_app
from services.kanban.settings import KanbanSettings
from services.runtime.aio_serving import AioServer, build_aio_server
from services.runtime.service_main import ServiceParts, run_service

log = logging.getLogger("services.kanban")


def build(settings: KanbanSettings, parts: ServiceParts) -> AioServer:
    """Migrates the database and starts the server, then the probes and the dispatcher.

    Closed after the drain, last registered first: database probe, backend
    probe, dispatcher (held runs are reclaimed after their lease), executor,
    app (streams end, pool closes), the sandbox client.
    """
    section = settings.kanban
    sandboxes = SandboxClient(settings.sandbox.addr, internal_token=settings.internal_token or None)
    parts.close_on_exit(sandboxes.close)
    executor = Executor(
        sandboxes,
        heartbeat_interval=max(1.0, section.claim_ttl_seconds / 3),
        max_output_bytes=section.run_output_max_bytes,
    )
    backend = BackendBreaker(
        sandboxes.health,
        name="sandbox",
        probe_interval=section.backend_probe_interval_seconds,
        max_probe_interval=section.backend_max_probe_interval_seconds,
    )
    meter = parts.meters.recording_meter("longshore.kanban")
    app = build_app(settings, executor=executor, backend=backend, meter=meter)
    parts.close_on_exit(app.close)
    parts.close_on_exit(lambda: executor.shutdown(wait=False))
    # A held long poll or stream costs a coroutine; the transactions of
    # every call run in the app's pool of kanban.max_workers threads.
    server = build_aio_server(
        app.grpc_services(),
        listen=section.listen,
        internal_token=settings.internal_token or None,
        max_concurrent_rpcs=section.max_concurrent_calls,
        shutdown_delay=settings.shutdown_delay_seconds,
        meter=meter,
    )
    database_health = DatabaseHealth(
        app.db,
        server.set_serving,
        interval=settings.database.probe_interval_seconds,
        timeout=settings.database.probe_timeout_seconds,
    )
    parts.close_on_exit(app.dispatcher.stop)
    parts.close_on_exit(backend.stop)
    parts.close_on_exit(database_health.stop)
    server.start()
    app.start()
    database_health.start()
    if section.dispatcher_enabled:
        backend.start()
        app.dispatcher.start()
    log.info("kanban serving on %s", server.address, extra={"instance": app.dispatcher.instance})
    return server


def main() -> int:
    """Serves kanban until SIGTERM/SIGINT; returns the exit code."""
    return run_service("kanban", KanbanSettings, build)


if __name__ == "__main__":
    sys.exit(main())
