"""``python -m services.sandbox``: wiring only (settings, logs, tracing, manager, server)."""

from __future__ import annotations

import sys

from services.runtime.config import load_settings
from services.runtime.logs import configure_logging
from services.runtime.metrics import configure_metrics
from services.runtime.serving import EXIT_CANNOT_START, BindError, build_server
from services.runtime.tracing import configure_tracing
from services.sandbox import leftovers
from services.sandbox.docker_client import create_client
from services.sandbox.engine_health import EngineHealth
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSettings


def main() -> int:
    """Runs the sandbox manager until SIGTERM/SIGINT, then drains cleanups; returns the exit."""
    settings = load_settings(SandboxSettings)
    section = settings.sandbox
    configure_logging("sandbox", settings.log_level)
    tracer_provider = configure_tracing("sandbox", endpoint=settings.otel_endpoint)
    try:
        meters = configure_metrics(
            "sandbox",
            otlp_endpoint=settings.otel_endpoint,
            prometheus_listen=settings.metrics_listen,
        )
    except BindError as exc:
        sys.stderr.write(f"sandbox: {exc}\n")
        return EXIT_CANNOT_START
    meter = meters.recording_meter("longshore.sandbox")
    client = create_client(
        timeout=section.docker_timeout_seconds,
        pool_size=section.max_workers + section.cleanup_workers + section.reap_workers + 4,
    )
    manager = SandboxManager(client, section, deployment=settings.deployment, meter=meter)
    startup_sweep = leftovers.StartupSweep(manager)

    def engine_changed(serving: bool, detail: str) -> None:
        # Called only from start() on, once the server below exists.
        server.set_serving(serving, detail)
        startup_sweep.engine_changed(serving)

    engine_health = EngineHealth.for_engine(
        engine_changed,
        interval_seconds=section.engine_probe_interval_seconds,
        timeout_seconds=section.engine_probe_timeout_seconds,
    )
    manager.engine_health = engine_health
    reaper = Reaper(manager)
    try:
        server = build_server(
            [
                grpc_service(
                    SandboxServicer(manager, reaper, internal_token=settings.internal_token)
                )
            ],
            listen=section.listen,
            max_workers=section.max_workers,
            internal_token=settings.internal_token or None,
            shutdown_delay=settings.shutdown_delay_seconds,
            meter=meter,
        )
    except BindError as exc:
        # One line, no traceback, and last (the supervisor shows the last line):
        # nothing was started, so close what was built first.
        manager.close(0)
        client.close()
        sys.stderr.write(f"sandbox: {exc}\n")
        return EXIT_CANNOT_START
    server.add_shutdown_hook(reaper.stop)
    server.add_shutdown_hook(engine_health.stop)

    def drain_cleanups() -> None:
        manager.close(section.cleanup_drain_seconds)

    server.add_shutdown_hook(drain_cleanups)
    server.add_shutdown_hook(client.close)
    server.add_shutdown_hook(meters.shutdown)
    server.add_shutdown_hook(tracer_provider.shutdown)
    # The first probe runs before serving, so health is truthful from the start.
    engine_health.start()
    # Before serving: a caller retrying a command a dead manager was running
    # must never find the old one still running next to its retry.
    startup_sweep.run()
    server.start()
    reaper.start()
    server.serve_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
