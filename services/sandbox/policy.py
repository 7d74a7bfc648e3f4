"""The operator's sandbox policy: what a spec may ask for, checked before any engine call.

One validation path for every caller, operators included: ``AcquireSandbox``
(through :func:`services.sandbox.hardening.resolve_spec`) and
``CheckSandboxSpec`` call :func:`admit`. A malformed field is INVALID_ARGUMENT;
a well-formed field that asks for more than the settings allow (a host bind
outside ``sandbox.allowed_host_paths``, a capability outside
``sandbox.allowed_capabilities``, a limit above ``sandbox.max_*``) is
PERMISSION_DENIED. Malformed fields are reported first, so a spec that is both
malformed and too wide is told what to fix before what to ask the operator for.
Every message names the field (``spec.<field>``) and quotes at most 100
characters of the caller's value.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from services.runtime.errors import InvalidArgument, PermissionDenied
from services.sandbox.model import Spec, Volume
from services.sandbox.settings import CAPABILITY_NAME, SandboxSection

MAX_IMAGE_CHARS = 255
MAX_PATH_CHARS = 4096
MAX_USER_CHARS = 64
MAX_ENV_ENTRIES = 128
MAX_ENV_VALUE_BYTES = 32 * 1024
MAX_ENV_TOTAL_BYTES = 256 * 1024
MAX_VOLUMES = 32
MAX_CAP_ADD = 64
#: The engine refuses a memory limit below 6 MiB.
MIN_MEMORY_BYTES = 6 * 1024 * 1024
#: The engine's CPU granularity; a smaller value would round to 0 nano-CPUs,
#: which the engine reads as "no limit".
MIN_CPUS = 0.01
#: Room for the init process, the keepalive and one command's shell.
MIN_PIDS_LIMIT = 8
QUOTE_CHARS = 100

#: Engine sockets: a volume naming one of these, or any directory above one,
#: would hand the sandbox control of the engine.
ENGINE_SOCKETS = (
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd/containerd.sock",
    "/run/containerd/containerd.sock",
)
#: A Docker named volume (the engine's own rule for local volume names).
_VOLUME_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{1,254}\Z")
_USER = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?\Z")
_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")
_TMPFS = "/tmp"  # noqa: S108 (the sandbox's own tmpfs, see hardening)


@dataclass(frozen=True)
class Admitted:
    """The normalised parts of a spec the policy admitted.

    Attributes:
        image: The image reference (the manager's default when the spec names none).
        volumes: Mounts with normalised paths; a ``host_path`` without ``/`` is
            a named volume.
        cap_add: Capability names, upper case, without ``CAP_``.
    """

    image: str
    volumes: tuple[Volume, ...]
    cap_add: tuple[str, ...]


def quote(value: str) -> str:
    """``repr`` of at most the first 100 characters of a caller-supplied value."""
    if len(value) <= QUOTE_CHARS:
        return repr(value)
    return repr(value[:QUOTE_CHARS]) + "…"


def is_named_volume(host_path: str) -> bool:
    """Whether a mount's ``host_path`` names a Docker volume rather than a host path."""
    return bool(_VOLUME_NAME.match(host_path))


def exposes_engine(host_path: str) -> bool:
    """Whether binding ``host_path`` would put an engine socket inside a sandbox."""
    host = normalise(host_path)
    if host == "/" or host.endswith(".sock"):
        return True
    return any(sock == host or sock.startswith(host + "/") for sock in ENGINE_SOCKETS)


def capability(name: str) -> str:
    """A capability as the policy compares it: upper case, without ``CAP_``."""
    return name.strip().upper().removeprefix("CAP_")


def admit(spec: Spec, section: SandboxSection) -> Admitted:
    """Checks ``spec`` against the field rules and the operator's policy.

    Args:
        spec: The requested spec.
        section: The manager's settings (defaults, allowlists, maxima).

    Returns:
        The normalised image, volumes and capabilities.

    Raises:
        InvalidArgument: A field is malformed; the message names it.
        PermissionDenied: A field asks for more than the policy allows; the
            message names the field and the setting.
    """
    image = _check_image(spec.image or section.default_image)
    _check_limits(spec)
    check_env(spec.env)
    _check_path("spec.workdir", spec.workdir, required=False)
    if spec.user and (len(spec.user) > MAX_USER_CHARS or not _USER.match(spec.user)):
        raise InvalidArgument(
            f"spec.user: expected uid[:gid] or a user name of at most {MAX_USER_CHARS} "
            f"characters, got {quote(spec.user)}"
        )
    volumes = _check_volumes(spec.volumes)
    cap_add = _check_capabilities(spec.cap_add)
    # Everything is well formed: now what the operator allows.
    _permit_limits(spec, section)
    _permit_volumes(volumes, section.allowed_host_paths)
    _permit_capabilities(cap_add, section)
    return Admitted(image=image, volumes=volumes, cap_add=cap_add)


def check_image_allowed(image: str, allowed_images: Sequence[str], section: SandboxSection) -> None:
    """Refuses an image outside a profile's images (no check when the list is empty).

    An empty entry stands for the manager's default image, as an empty
    ``spec.image`` does.

    Raises:
        PermissionDenied: ``image`` is not one of ``allowed_images``.
    """
    if not allowed_images:
        return
    allowed = {entry or section.default_image for entry in allowed_images}
    if (image or section.default_image) not in allowed:
        raise PermissionDenied(f"spec.image: {quote(image)} is not one of the profile's images")


def check_snapshot_image(image: str, repository: str, section: SandboxSection) -> None:
    """Refuses an image in the snapshot namespace outside this deployment's repository.

    The pure half of the snapshot rule (no engine call, so CheckSandboxSpec
    applies it too); the acquire also inspects the image's labels (see
    :meth:`services.sandbox.lifecycle.snapshots.Snapshots.admit_image`).

    Raises:
        PermissionDenied: ``image`` is a snapshot of another deployment.
    """
    if image.startswith(section.snapshot_repository + "/") and not image.startswith(
        repository + ":"
    ):
        raise PermissionDenied(
            f"spec.image: {quote(image)} is a snapshot of another deployment; this "
            f"deployment's snapshots are {quote(repository)}"
        )


def _check_image(image: str) -> str:
    if not image:
        raise InvalidArgument("spec.image: required (the manager has no default image)")
    if len(image) > MAX_IMAGE_CHARS:
        raise InvalidArgument(
            f"spec.image: at most {MAX_IMAGE_CHARS} characters, got {len(image)}: {quote(image)}"
        )
    if any(c.isspace() or not c.isprintable() for c in image):
        raise InvalidArgument(
            f"spec.image: must not contain whitespace or control characters, got {quote(image)}"
        )
    return image


def _check_limits(spec: Spec) -> None:
    if not math.isfinite(spec.cpus):
        raise InvalidArgument(f"spec.cpus: must be a finite number, got {spec.cpus}")
    if spec.cpus < 0:
        raise InvalidArgument(f"spec.cpus: must not be negative, got {spec.cpus:g}")
    if 0 < spec.cpus < MIN_CPUS:
        raise InvalidArgument(f"spec.cpus: at least {MIN_CPUS} when set, got {spec.cpus:g}")
    if spec.memory_bytes < 0:
        raise InvalidArgument(f"spec.memory_bytes: must not be negative, got {spec.memory_bytes}")
    if 0 < spec.memory_bytes < MIN_MEMORY_BYTES:
        raise InvalidArgument(
            f"spec.memory_bytes: at least {MIN_MEMORY_BYTES} (6 MiB, the engine's minimum) "
            f"when set, got {spec.memory_bytes}"
        )
    if spec.pids_limit < 0:
        raise InvalidArgument(f"spec.pids_limit: must not be negative, got {spec.pids_limit}")
    if 0 < spec.pids_limit < MIN_PIDS_LIMIT:
        raise InvalidArgument(
            f"spec.pids_limit: at least {MIN_PIDS_LIMIT} when set (init, keepalive and a "
            f"command), got {spec.pids_limit}"
        )


def _permit_limits(spec: Spec, section: SandboxSection) -> None:
    if spec.cpus > section.max_cpus:
        raise PermissionDenied(
            f"spec.cpus: {spec.cpus:g} exceeds sandbox.max_cpus ({section.max_cpus:g})"
        )
    if spec.memory_bytes > section.max_memory_bytes:
        raise PermissionDenied(
            f"spec.memory_bytes: {spec.memory_bytes} exceeds sandbox.max_memory_bytes "
            f"({section.max_memory_bytes})"
        )
    if spec.pids_limit > section.max_pids_limit:
        raise PermissionDenied(
            f"spec.pids_limit: {spec.pids_limit} exceeds sandbox.max_pids_limit "
            f"({section.max_pids_limit})"
        )


def check_env(env: Mapping[str, str], field: str = "spec.env") -> None:
    """Refuses an environment beyond the bounds of ``SandboxSpec.env``, naming ``field``.

    Raises:
        InvalidArgument: Too many entries, a bad name, a value too long or with
            NUL, too many bytes in all.
    """
    if len(env) > MAX_ENV_ENTRIES:
        raise InvalidArgument(f"{field}: at most {MAX_ENV_ENTRIES} entries, got {len(env)}")
    total = 0
    for name, value in env.items():
        if not _ENV_NAME.match(name):
            raise InvalidArgument(f"{field}: invalid variable name {quote(name)}")
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > MAX_ENV_VALUE_BYTES:
            raise InvalidArgument(
                f"{field}[{quote(name)}]: value is {size} bytes, at most {MAX_ENV_VALUE_BYTES}"
            )
        if "\x00" in value:
            raise InvalidArgument(f"{field}[{quote(name)}]: value must not contain NUL")
        total += len(name) + 1 + size
    if total > MAX_ENV_TOTAL_BYTES:
        raise InvalidArgument(
            f"{field}: {total} bytes of names and values, at most {MAX_ENV_TOTAL_BYTES}"
        )


def _check_path(where: str, path: str, *, required: bool = True) -> str:
    """An absolute, bounded path without ``..``, ``:``, ``,`` or control characters."""
    if not path:
        if required:
            raise InvalidArgument(f"{where}: required (an absolute path)")
        return path
    if len(path) > MAX_PATH_CHARS:
        raise InvalidArgument(f"{where}: at most {MAX_PATH_CHARS} characters, got {len(path)}")
    if not path.startswith("/"):
        raise InvalidArgument(f"{where}: must be an absolute path, got {quote(path)}")
    if any(not c.isprintable() for c in path):
        raise InvalidArgument(f"{where}: must not contain control characters, got {quote(path)}")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{where}: must not contain '..', got {quote(path)}")
    return normalise(path)


def normalise(path: str) -> str:
    """``path`` without ``.``, repeated ``/`` or a trailing ``/``.

    Leading slashes collapse too: POSIX keeps ``//x`` as is, which would slip
    past a prefix comparison with ``/x``.
    """
    return posixpath.normpath("/" + path.lstrip("/"))


def _check_volumes(volumes: Sequence[Volume]) -> tuple[Volume, ...]:
    if len(volumes) > MAX_VOLUMES:
        raise InvalidArgument(f"spec.volumes: at most {MAX_VOLUMES} entries, got {len(volumes)}")
    out: list[Volume] = []
    mounted: dict[str, int] = {}
    for index, volume in enumerate(volumes):
        where = f"spec.volumes[{index}]"
        if is_named_volume(volume.host_path):
            host = volume.host_path
        else:
            host = _check_path(f"{where}.host_path", volume.host_path)
            if ":" in host or "," in host:
                raise InvalidArgument(f"{where}.host_path: must not contain ':' or ','")
            if exposes_engine(host):
                raise InvalidArgument(
                    f"{where}.host_path: {quote(host)} would expose the engine; refused"
                )
        container = _check_path(f"{where}.container_path", volume.container_path)
        if ":" in container or "," in container:
            raise InvalidArgument(f"{where}.container_path: must not contain ':' or ','")
        if container == "/":
            raise InvalidArgument(f"{where}.container_path: cannot mount over '/'")
        if container == _TMPFS:
            raise InvalidArgument(f"{where}.container_path: '/tmp' is the sandbox's own tmpfs")
        if container in mounted:
            raise InvalidArgument(
                f"{where}.container_path: {quote(container)} is already mounted by "
                f"spec.volumes[{mounted[container]}]"
            )
        mounted[container] = index
        out.append(Volume(host, container, volume.read_only))
    return tuple(out)


def _under(path: str, roots: Iterable[str]) -> bool:
    for root in roots:
        base = normalise(root)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return True
    return False


def _permit_volumes(volumes: Sequence[Volume], allowed: Sequence[str]) -> None:
    for index, volume in enumerate(volumes):
        if is_named_volume(volume.host_path) or _under(volume.host_path, allowed):
            continue
        shown = ", ".join(quote(p) for p in allowed[:5]) + (", …" if len(allowed) > 5 else "")
        raise PermissionDenied(
            f"spec.volumes[{index}].host_path: {quote(volume.host_path)} is not under "
            f"sandbox.allowed_host_paths ({shown or 'empty'})"
        )


def _check_capabilities(caps: Sequence[str]) -> tuple[str, ...]:
    if len(caps) > MAX_CAP_ADD:
        raise InvalidArgument(f"spec.cap_add: at most {MAX_CAP_ADD} entries, got {len(caps)}")
    out = []
    for index, cap in enumerate(caps):
        if not CAPABILITY_NAME.match(cap.strip().upper()):
            raise InvalidArgument(f"spec.cap_add[{index}]: invalid capability {quote(cap)}")
        out.append(capability(cap))
    return tuple(out)


def _permit_capabilities(caps: Sequence[str], section: SandboxSection) -> None:
    # The minimal list is kept anyway: naming one of those adds nothing.
    allowed = {capability(c) for c in (*section.capabilities, *section.allowed_capabilities)}
    for index, cap in enumerate(caps):
        if cap not in allowed:
            listed = ", ".join(capability(c) for c in section.allowed_capabilities) or "empty"
            raise PermissionDenied(
                f"spec.cap_add[{index}]: {quote(cap)} is not in "
                f"sandbox.allowed_capabilities ({listed})"
            )
