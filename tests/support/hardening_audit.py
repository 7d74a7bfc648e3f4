"""Every sandbox the suite creates is inspected for the hardening no caller can undo.

A thread follows the engine's ``create`` events for containers labelled
``io.longshore.managed=1`` whose deployment belongs to this run, inspects each
one as it appears, and records what breaks the invariants of DESIGN.md's
"hardened by default": an init process, every capability dropped (only the
minimal list plus operator-allowed ones added back), ``no-new-privileges``,
pids/memory/CPU limits, a tmpfs ``/tmp``, never privileged, never the host's
network or PID namespace, never the engine socket. The ``docker_client``
fixture fails the session at its end if anything was recorded.

Tests that forge a labelled container by hand on purpose (to test the
reaper or the deployment filter) mark it ``io.longshore.test-forged=1``.
"""

from __future__ import annotations

import threading
from typing import Any

import docker
import docker.errors

FORGED_LABEL = "io.longshore.test-forged"
_SOCKETS = ("docker.sock", "containerd.sock")


def violations(attrs: dict[str, Any]) -> list[str]:
    """What in one container's inspect breaks the sandbox hardening."""
    host = attrs.get("HostConfig") or {}
    found = []
    if host.get("Init") is not True:
        found.append("no init process")
    if host.get("CapDrop") != ["ALL"]:
        found.append(f"CapDrop {host.get('CapDrop')}")
    if host.get("Privileged"):
        found.append("privileged")
    if "no-new-privileges:true" not in (host.get("SecurityOpt") or []):
        found.append("no-new-privileges missing")
    for limit in ("PidsLimit", "Memory", "NanoCpus"):
        if not host.get(limit):
            found.append(f"no {limit}")
    if "/tmp" not in (host.get("Tmpfs") or {}):
        found.append("no tmpfs /tmp")
    if host.get("NetworkMode") not in ("bridge", "none", "default"):
        found.append(f"network {host.get('NetworkMode')}")
    if host.get("PidMode") or host.get("IpcMode") == "host":
        found.append("host namespace")
    for mount in attrs.get("Mounts") or []:
        if any(sock in (mount.get("Source") or "") for sock in _SOCKETS):
            found.append(f"engine socket mounted ({mount.get('Source')})")
    return found


class HardeningAudit:
    """Follows container creations on the engine and inspects this run's sandboxes."""

    def __init__(self, client: docker.DockerClient, run_id: str) -> None:
        self._client = client
        self._prefix = f"t{run_id}"
        self.seen = 0
        self.problems: list[str] = []
        self._events = client.events(
            decode=True,
            filters={"type": "container", "event": "create", "label": "io.longshore.managed=1"},
        )
        self._thread = threading.Thread(target=self._follow, name="hardening-audit", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for event in self._events:
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                deployment = attributes.get("io.longshore.deployment", "")
                if not deployment.startswith(self._prefix) or attributes.get(FORGED_LABEL):
                    continue
                self._check(str(event.get("id") or (event.get("Actor") or {}).get("ID")))
        except Exception:
            pass

    def _check(self, container_id: str) -> None:
        try:
            attrs = self._client.api.inspect_container(container_id)
        except docker.errors.NotFound:
            return  # already removed: it lived too briefly to be inspected
        self.seen += 1
        found = violations(attrs)
        if found:
            name = str(attrs.get("Name", container_id)).lstrip("/")
            self.problems.append(f"{name}: {', '.join(found)}")

    def close(self) -> None:
        """Stop following (events created before this are still checked)."""
        self._events.close()
        self._thread.join(timeout=5)
