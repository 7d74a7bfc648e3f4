"""``python -m services.kanban``: wiring only (settings, logs, tracing, database, server)."""

from __future__ import annotations

import logging
import sys

from services.kanban.backends import BackendBreaker
from services.kanban.db_health import DatabaseHealth
from services.kanban.executor import Executor
from services.kanban.sandbox_client import SandboxClient
from services.kanban.service import build_app
from services.kanban.settings import KanbanSettings
from services.runtime.aio_serving import build_aio_server
from services.runtime.config import load_settings
from services.runtime.logs import configure_logging
from services.runtime.serving import EXIT_CANNOT_START, BindError
from services.runtime.tracing import configure_tracing

log = logging.getLogger("services.kanban")


def main() -> int:
    """Migrate the database, then serve until SIGTERM/SIGINT; return the exit code."""
    settings = load_settings(KanbanSettings)
    section = settings.kanban
    configure_logging("kanban", settings.log_level)
    configure_tracing("kanban", endpoint=settings.otel_endpoint)
    sandboxes = SandboxClient(settings.sandbox.addr, internal_token=settings.internal_token or None)
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
    app = build_app(settings, executor=executor, backend=backend)
    try:
        # A held long poll or stream costs a coroutine; the transactions of
        # every call run in the app's pool of kanban.max_workers threads.
        server = build_aio_server(
            app.grpc_services(),
            listen=section.listen,
            internal_token=settings.internal_token or None,
            max_concurrent_rpcs=section.max_concurrent_calls,
            shutdown_delay=settings.shutdown_delay_seconds,
        )
    except BindError as exc:
        # One line, no traceback, and last (the supervisor shows the last line):
        # nothing was started, so close what was built first.
        app.close()
        sandboxes.close()
        sys.stderr.write(f"kanban: {exc}\n")
        return EXIT_CANNOT_START
    # After the server drained: stop ticking, let held runs be reclaimed
    # after their lease (abandoned), then end streams and close the pool.
    database_health = DatabaseHealth(
        app.db,
        server.set_serving,
        interval=settings.database.probe_interval_seconds,
        timeout=settings.database.probe_timeout_seconds,
    )
    server.add_shutdown_hook(database_health.stop)
    server.add_shutdown_hook(backend.stop)
    server.add_shutdown_hook(app.dispatcher.stop)
    server.add_shutdown_hook(lambda: executor.shutdown(wait=False))
    server.add_shutdown_hook(app.close)
    server.add_shutdown_hook(sandboxes.close)
    server.start()
    app.start()
    database_health.start()
    if section.dispatcher_enabled:
        backend.start()
        app.dispatcher.start()
    log.info("kanban serving on %s", server.address, extra={"instance": app.dispatcher.instance})
    server.serve_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
