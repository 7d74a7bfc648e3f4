"""``python -m services.sandbox``: wiring only (settings, logs, tracing, manager, server)."""

from __future__ import annotations

import sys

from services.runtime.aio_serving import AioServer, build_aio_server
from services.runtime.service_main import ServiceParts, run_service
from services.sandbox import leftovers
from services.sandbox.docker_client import create_client
from services.sandbox.engine_health import EngineHealth
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper
from services.sandbox.server import SandboxServicer, grpc_service
from services.sandbox.settings import SandboxSettings


def build(settings: SandboxSettings, parts: ServiceParts) -> AioServer:
    """The manager's server, started after the first engine probe and the startup sweep.

    Closed after the drain, last registered first: the reaper, the engine
    probe, the kills of abandoned Execs, outstanding cleanups (drained,
    bounded), the engine client.
    """
    section = settings.sandbox
    meter = parts.meters.recording_meter("longshore.sandbox")
    client = create_client(
        timeout=section.docker_timeout_seconds,
        pool_size=section.max_workers + section.cleanup_workers + section.reap_workers + 4,
    )
    parts.close_on_exit(client.close)
    manager = SandboxManager(client, section, deployment=settings.deployment, meter=meter)
    # Nothing is outstanding when the bind fails, so the drain returns at once.
    parts.close_on_exit(lambda: manager.close(section.cleanup_drain_seconds))
    startup_sweep = leftovers.StartupSweep(manager)
    reaper = Reaper(manager)
    # Until every RPC of the contract is served, the generated base answers
    # the rest UNIMPLEMENTED (issue 13 lands them one capability at a time).
    servicer = SandboxServicer(  # type: ignore[abstract]
        manager, reaper, internal_token=settings.internal_token
    )
    parts.close_on_exit(servicer.close)
    server = build_aio_server(
        [grpc_service(servicer)],
        listen=section.listen,
        internal_token=settings.internal_token or None,
        # As the thread-pool server did: calls beyond the pool wait in its
        # queue, and beyond this many the caller hears RESOURCE_EXHAUSTED.
        max_concurrent_rpcs=section.max_workers * 64,
        shutdown_delay=settings.shutdown_delay_seconds,
        meter=meter,
    )

    def engine_changed(serving: bool, detail: str) -> None:
        server.set_serving(serving, detail)
        startup_sweep.engine_changed(serving)

    engine_health = EngineHealth.for_engine(
        engine_changed,
        interval_seconds=section.engine_probe_interval_seconds,
        timeout_seconds=section.engine_probe_timeout_seconds,
    )
    manager.engine_health = engine_health
    parts.close_on_exit(engine_health.stop)
    # The first probe runs before serving, so health is truthful from the start.
    engine_health.start()
    # Before serving: a caller retrying a command a dead manager was running
    # must never find the old one still running next to its retry.
    startup_sweep.run()
    server.start()
    parts.close_on_exit(reaper.stop)
    reaper.start()
    # After the server serves: the filler re-adopts members, then fills in
    # the background (a missing image only sets the pool's reason).
    parts.close_on_exit(manager.pools.stop)
    manager.pools.start()
    return server


def main() -> int:
    """Runs the sandbox manager until SIGTERM/SIGINT, then drains cleanups; returns the exit."""
    return run_service("sandbox", SandboxSettings, build)


if __name__ == "__main__":
    sys.exit(main())
