"""Defaults and the hardened host config every sandbox runs with.

Hardening by default: an init process as PID 1, every capability dropped but a
documented minimal list, ``no-new-privileges``, pids/memory/cpu limits, a tmpfs
``/tmp``, and never the engine socket inside. Options: read-only root
filesystem, no network, a user. What a spec may ask for is the operator's
policy (:mod:`.policy`), checked by :func:`resolve_spec` before anything else.
"""

from __future__ import annotations

from typing import Any

from services.runtime.errors import InvalidArgument
from services.sandbox import labels
from services.sandbox.model import Network, ResolvedSpec, Spec
from services.sandbox.policy import admit, capability, exposes_engine, is_named_volume, quote
from services.sandbox.settings import SandboxSection


def resolve_spec(spec: Spec, defaults: SandboxSection) -> ResolvedSpec:
    """Admits ``spec`` under the manager's policy and fills in its defaults.

    Raises:
        InvalidArgument: A field is malformed; the message names it (``spec.<field>``).
        PermissionDenied: A field asks for more than the policy allows.
    """
    admitted = admit(spec, defaults)
    image, volumes, cap_add = admitted.image, admitted.volumes, admitted.cap_add
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


def host_config_kwargs(spec: ResolvedSpec, section: SandboxSection) -> dict[str, Any]:
    """Keyword arguments for ``APIClient.create_host_config`` of a hardened sandbox."""
    for volume in spec.volumes:
        # Defence in depth: a spec reaches here only through resolve_spec, but
        # the engine socket must never be bound whatever path built the spec.
        if not is_named_volume(volume.host_path) and exposes_engine(volume.host_path):
            raise InvalidArgument(
                f"spec.volumes: {quote(volume.host_path)} would expose the engine"
            )
    caps = sorted({capability(c) for c in section.capabilities} | set(spec.cap_add))
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
