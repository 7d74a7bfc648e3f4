"""Engine health: a background probe that keeps the manager's health truthful.

A thread pings the Docker engine every ``sandbox.engine_probe_interval_seconds``
with its own bounded timeout (a client of its own, so a probe never waits
behind the pool's long calls). When a ping fails the manager's gRPC health
turns NOT_SERVING with ``docker engine unreachable: <reason>`` (the gateway's
GetStatus shows it as the backend's detail) and the manager answers calls
with UNAVAILABLE at once instead of waiting for the engine's timeout; the
first ping that succeeds turns it back to SERVING.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, cast

import docker
import docker.constants
import docker.errors
import docker.utils

from services.runtime.errors import Unavailable
from services.sandbox.docker_client import unreachable_reason

log = logging.getLogger(__name__)

#: Called with (serving, detail) on every change, e.g. ``Server.set_serving``.
OnChange = Callable[[bool, str], None]


class EngineHealth:
    """Probes the engine in the background and reports changes.

    Args:
        ping: One bounded probe; raises when the engine does not answer.
        on_change: Called with (serving, detail) when the state changes
            (and once after the first probe).
        interval_seconds: Seconds between probes.
    """

    def __init__(self, ping: Callable[[], object], on_change: OnChange, interval_seconds: float):
        self._ping = ping
        self._on_change = on_change
        self._interval = interval_seconds
        self._lock = threading.Lock()
        self._down_reason = ""
        self._known = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_engine(
        cls, on_change: OnChange, *, interval_seconds: float, timeout_seconds: float
    ) -> EngineHealth:
        """A probe on the engine named by ``DOCKER_HOST`` with its own short-timeout client.

        Raises:
            Unavailable: ``DOCKER_HOST`` cannot be understood.
        """
        try:
            # A fixed API version: "auto" would call the engine here, and a
            # probe must be creatable while the engine is down.
            client = docker.APIClient(
                **docker.utils.kwargs_from_env(),
                version=docker.constants.DEFAULT_DOCKER_API_VERSION,
                timeout=max(1, round(timeout_seconds)),
                max_pool_size=1,
            )
        except docker.errors.DockerException as exc:
            raise Unavailable(f"docker engine unreachable: {unreachable_reason(exc)}") from exc

        raw = cast(Any, client)

        def ping() -> object:
            # Unversioned /_ping: every engine answers it, whatever API
            # versions it supports.
            return raw._result(raw._get(f"{client.base_url}/_ping"))

        return cls(ping, on_change, interval_seconds)

    @property
    def down_reason(self) -> str:
        """Why the engine is unreachable ("" while it answers or before the first probe)."""
        with self._lock:
            return self._down_reason

    def check(self) -> None:
        """Raises at once while the last probe failed.

        Raises:
            Unavailable: The engine did not answer the last probe.
        """
        reason = self.down_reason
        if reason:
            raise Unavailable(f"docker engine unreachable: {reason}")

    def probe(self) -> bool:
        """Pings once, records and reports the result; returns whether the engine answered."""
        try:
            self._ping()
            reason = ""
        except Exception as exc:  # any failure of the ping means "not answering"
            reason = unreachable_reason(exc) or type(exc).__name__
        with self._lock:
            changed = not self._known or bool(reason) != bool(self._down_reason)
            self._known = True
            self._down_reason = reason
        if changed:
            if reason:
                log.error("docker engine unreachable", extra={"reason": reason})
                self._on_change(False, f"docker engine unreachable: {reason}")
            else:
                log.info("docker engine reachable")
                self._on_change(True, "")
        return not reason

    def start(self) -> None:
        """Probes once now, then every interval on a daemon thread."""
        self.probe()
        self._thread = threading.Thread(target=self._run, name="engine-health", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stops the thread (waits at most ``timeout``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.probe()
