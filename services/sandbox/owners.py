"""Who a manager is, and whether the manager that owns a sandbox or an exec is dead.

Every sandbox carries its creator in ``io.longshore.owner`` and every exec
carries its manager in its marker (``LONGSHORE_EXEC_ID=<owner>~<random>``).
The owner id records what another manager needs to tell, without signalling
anything, whether that manager still runs:

* ``<host>.c<container>.<started>``: the manager runs in a container of the
  engine it drives (compose): its container id (from ``/proc/self/mountinfo``)
  and that container's ``State.StartedAt``. It is **dead** when the engine
  says the container is gone, not running, or was started again since
  (``StartedAt`` changed). This is the compose case: a restarted manager has
  the same hostname and pid 1, but a new start time.
* ``<host>.p<boot>.<pidns>.<pid>.<start>``: any other manager process: the
  kernel's boot id, its pid namespace, its pid and its start time in clock
  ticks (``/proc/<pid>/stat`` field 22). Only a manager on the same kernel
  (boot id) and in the same pid namespace can judge it: the owner is **dead**
  when ``/proc/<pid>`` is gone or holds a process with another start time
  (pid reuse), read from ``/proc`` only.

Anything else (another host, another pid namespace, an engine error, a value
this module did not write) is **unknown**, treated as alive: its sandboxes age
out through the ordinary idle rules and grace period instead.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Separates the owner from the random part of an exec marker.
MARKER_SEPARATOR = "~"
_HOST_CHARS = 12
_CONTAINER_PATH = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)\b")
_PROCESS = re.compile(r"\.p([0-9a-f]{12})\.(\d{1,20})\.(\d{1,10})\.(\d{1,20})\Z")
_CONTAINER = re.compile(r"\.c([0-9a-f]{12})\.(\d{14,23})\Z")

#: Inspects a container by id: its engine record, or None when it does not exist.
Inspect = Callable[[str], Mapping[str, Any] | None]


@dataclass(frozen=True)
class Identity:
    """This process as the liveness rule sees it."""

    boot_id: str
    pid_namespace: str
    proc: Path = Path("/proc")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def start_ticks(pid: int, proc: Path = Path("/proc")) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" when there is no such pid)."""
    raw = _read(proc / str(pid) / "stat")
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    fields = raw.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def identity(proc: Path = Path("/proc")) -> Identity:
    """This process's boot id and pid namespace (empty when ``/proc`` does not say)."""
    boot = _read(proc / "sys" / "kernel" / "random" / "boot_id").strip().replace("-", "")
    try:
        link = (proc / "self" / "ns" / "pid").readlink()
        namespace = "".join(ch for ch in str(link) if ch.isdigit())
    except OSError:
        namespace = ""
    return Identity(boot_id=boot[:12], pid_namespace=namespace, proc=proc)


def own_container_id(proc: Path = Path("/proc")) -> str:
    """The id of the container this process runs in ("" when not in a Docker container)."""
    match = _CONTAINER_PATH.search(_read(proc / "self" / "mountinfo"))
    return match.group(1) if match else ""


def _host() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
    return host[:_HOST_CHARS]


def _digits(stamp: str) -> str:
    return "".join(ch for ch in stamp if ch.isdigit())[:23]


def current_owner(inspect: Inspect | None = None, proc: Path = Path("/proc")) -> str:
    """The owner id of this manager process (at most 63 label-safe characters).

    Args:
        inspect: Reads a container from the engine; used to learn this
            container's start time when the manager runs in a container.
        proc: The proc filesystem (injectable for tests).
    """
    cid = own_container_id(proc)
    if cid and inspect is not None:
        try:
            data = inspect(cid)
        except Exception as exc:  # an engine without our container: not compose
            log.info("own container not inspectable", extra={"error": str(exc)})
            data = None
        started = _digits(str(((data or {}).get("State") or {}).get("StartedAt", "")))
        if len(started) >= 14:
            return f"{_host()}.c{cid[:12]}.{started}"
    me = identity(proc)
    pid = os.getpid()
    boot = me.boot_id or "0" * 12
    start = start_ticks(pid, proc) or "0"
    return f"{_host()}.p{boot}.{me.pid_namespace or 0}.{pid}.{start}"


def owner_of_marker(marker: str) -> str:
    """The owner part of an exec marker value ("" when it has none)."""
    owner, sep, _ = marker.rpartition(MARKER_SEPARATOR)
    return owner if sep else ""


class Liveness:
    """Judges owners by the rule of the module docstring; remembers the dead.

    Args:
        inspect: Reads a container from the engine (None when it does not exist).
        me: This process's identity.
    """

    def __init__(self, inspect: Inspect, me: Identity | None = None) -> None:
        self._inspect = inspect
        self._me = me or identity()
        # Sweeps judge owners from several threads at once.
        self._lock = threading.Lock()
        self._dead: set[str] = set()

    def is_dead(self, owner: str) -> bool:
        """Whether ``owner`` is known to be dead (False when alive or unknown)."""
        if not owner:
            return False
        with self._lock:
            if owner in self._dead:
                return True  # a dead owner never comes back: its id names one start
        dead = self._judge(owner)
        if dead:
            with self._lock:
                self._dead.add(owner)
        return dead

    def _judge(self, owner: str) -> bool:
        process = _PROCESS.search(owner)
        if process is not None:
            boot, namespace, pid, start = process.groups()
            if boot != self._me.boot_id or namespace != self._me.pid_namespace:
                return False  # another kernel or pid namespace: we cannot tell
            return start_ticks(int(pid), self._me.proc) != start
        container = _CONTAINER.search(owner)
        if container is not None:
            cid, started = container.groups()
            try:
                data = self._inspect(cid)
            except Exception as exc:  # engine trouble: unknown, not dead
                log.info("owner container not inspectable", extra={"error": str(exc)})
                return False
            if data is None:
                return True
            state = data.get("State") or {}
            return not state.get("Running") or _digits(str(state.get("StartedAt", ""))) != started
        return False
