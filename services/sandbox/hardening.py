"""Spec validation, defaults and the hardened host config every sandbox runs with.

Hardening by default: an init process as PID 1, every capability dropped but a
documented minimal list, ``no-new-privileges``, pids/memory/cpu limits, a tmpfs
``/tmp``, and never the engine socket inside. Options: read-only root
filesystem, no network, a user.
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from services.runtime.errors import InvalidArgument
from services.sandbox import labels
from services.sandbox.model import Network, ResolvedSpec, Spec, Volume
from services.sandbox.settings import SandboxSection

#: Engine sockets: a volume naming one of these, or any directory above one,
#: would hand the sandbox control of the engine.
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
)
_CAPABILITY = re.compile(r"\A(CAP_)?[A-Z_]{2,32}\Z")
_USER = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?\Z")
_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def resolve_spec(spec: Spec, defaults: SandboxSection) -> ResolvedSpec:
    """Validates ``spec`` and fills in the manager's defaults.

    Raises:
        InvalidArgument: A field is invalid; the message names it (``spec.<field>``).
    """
    image = spec.image or defaults.default_image
    if not image:
        raise InvalidArgument("spec.image: required (the manager has no default image)")
    if spec.cpus < 0:
        raise InvalidArgument("spec.cpus: must not be negative")
    if spec.memory_bytes < 0:
        raise InvalidArgument("spec.memory_bytes: must not be negative")
    if spec.pids_limit < 0:
        raise InvalidArgument("spec.pids_limit: must not be negative")
    for name in spec.env:
        if not _ENV_NAME.match(name):
            raise InvalidArgument(f"spec.env: invalid variable name {name!r}")
    volumes = tuple(_check_volume(i, v) for i, v in enumerate(spec.volumes))
    if spec.workdir and not spec.workdir.startswith("/"):
        raise InvalidArgument("spec.workdir: must be an absolute path")
    if spec.user and not _USER.match(spec.user):
        raise InvalidArgument("spec.user: expected uid[:gid] or a user name")
    cap_add = tuple(_check_capability(i, c) for i, c in enumerate(spec.cap_add))
    resolved: dict[str, Any] = {
        "image": image,
        "cpus": spec.cpus or defaults.default_cpus,
        "memory_bytes": spec.memory_bytes or defaults.default_memory_bytes,
        "pids_limit": spec.pids_limit or defaults.default_pids_limit,
        "volumes": volumes,
        "workdir": spec.workdir,
        "network": spec.network or Network.BRIDGE,
        "read_only_rootfs": spec.read_only_rootfs,
        "user": spec.user,
        "cap_add": cap_add,
    }
    digest = labels.config_hash(
        image=image,
        cpus=resolved["cpus"],
        memory_bytes=resolved["memory_bytes"],
        pids_limit=resolved["pids_limit"],
        env_names=list(spec.env),
        volumes=[
            {"host": v.host_path, "container": v.container_path, "ro": v.read_only} for v in volumes
        ],
        workdir=spec.workdir,
        network=resolved["network"].value,
        read_only_rootfs=spec.read_only_rootfs,
        user=spec.user,
        cap_add=cap_add,
    )
    return ResolvedSpec(env=dict(spec.env), config_hash=digest, **resolved)


def _check_volume(index: int, volume: Volume) -> Volume:
    where = f"spec.volumes[{index}]"
    for attr in ("host_path", "container_path"):
        path = getattr(volume, attr)
        if not path or not path.startswith("/"):
            raise InvalidArgument(f"{where}.{attr}: must be an absolute path, got {path!r}")
        if ":" in path or "," in path:
            raise InvalidArgument(f"{where}.{attr}: must not contain ':' or ','")
    host = posixpath.normpath(volume.host_path)
    if exposes_engine(host):
        raise InvalidArgument(f"{where}.host_path: {host!r} would expose the engine; refused")
    container = posixpath.normpath(volume.container_path)
    if container == "/":
        raise InvalidArgument(f"{where}.container_path: cannot mount over '/'")
    return Volume(host, container, volume.read_only)


def exposes_engine(host_path: str) -> bool:
    """Whether binding ``host_path`` would put an engine socket inside a sandbox."""
    host = posixpath.normpath(host_path)
    if host == "/" or host.endswith(".sock"):
        return True
    return any(sock == host or sock.startswith(host + "/") for sock in ENGINE_SOCKETS)


def _check_capability(index: int, cap: str) -> str:
    name = cap.strip().upper()
    if not _CAPABILITY.match(name):
        raise InvalidArgument(f"spec.cap_add[{index}]: invalid capability {cap!r}")
    return name.removeprefix("CAP_")


def host_config_kwargs(spec: ResolvedSpec, section: SandboxSection) -> dict[str, Any]:
    """Keyword arguments for ``APIClient.create_host_config`` of a hardened sandbox."""
    caps = sorted(
        {c.upper().removeprefix("CAP_") for c in section.capabilities} | set(spec.cap_add)
    )
    kwargs: dict[str, Any] = {
        "init": True,
        "cap_drop": ["ALL"],
        "cap_add": caps,
        "security_opt": ["no-new-privileges:true"],
        "pids_limit": spec.pids_limit,
        "mem_limit": spec.memory_bytes,
        "memswap_limit": spec.memory_bytes,
        "nano_cpus": int(spec.cpus * 1_000_000_000),
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={section.tmp_size_bytes}"},  # noqa: S108
        "network_mode": spec.network.value,
        "read_only": spec.read_only_rootfs,
        "binds": [
            f"{v.host_path}:{v.container_path}:{'ro' if v.read_only else 'rw'}"
            for v in spec.volumes
        ],
    }
    return kwargs


def environment_list(env: dict[str, str] | Any) -> list[str]:
    """``KEY=value`` strings for the engine API (never for an argv)."""
    return [f"{k}={v}" for k, v in env.items()]
