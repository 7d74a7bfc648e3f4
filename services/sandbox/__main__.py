"""``python -m services.sandbox``: wiring only (settings, logs, tracing, manager, server)."""

from __future__ import annotations

from services.runtime.config import load_settings
from services.runtime.logs import configure_logging
from services.runtime.serving import build_server
from services.runtime.tracing import configure_tracing
from services.sandbox.docker_client import create_client
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSettings


def main() -> None:
    """Runs the sandbox manager until SIGTERM/SIGINT, then drains cleanups."""
    settings = load_settings(SandboxSettings)
    section = settings.sandbox
    configure_logging("sandbox", settings.log_level)
    tracer_provider = configure_tracing("sandbox", endpoint=settings.otel_endpoint)
    client = create_client(
        timeout=section.docker_timeout_seconds,
        pool_size=section.max_workers + section.cleanup_workers + section.reap_workers + 4,
    )
    manager = SandboxManager(client, section, deployment=settings.deployment)
    reaper = Reaper(manager)
    server = build_server(
        [grpc_service(SandboxServicer(manager, reaper))],
        listen=section.listen,
        max_workers=section.max_workers,
        internal_token=settings.internal_token or None,
        shutdown_delay=settings.shutdown_delay_seconds,
    )
    server.add_shutdown_hook(reaper.stop)

    def drain_cleanups() -> None:
        manager.close(section.cleanup_drain_seconds)

    server.add_shutdown_hook(drain_cleanups)
    server.add_shutdown_hook(client.close)
    server.add_shutdown_hook(tracer_provider.shutdown)
    server.start()
    reaper.start()
    server.serve_until_signal()


if __name__ == "__main__":
    main()
