"""Label names, the injective label-value sanitizer, container names and config hashes.

Every sandbox carries the ``io.longshore.*`` labels of DESIGN.md; sandboxes are
found by these labels, never by name prefix. Names are still deterministic for
persistent sandboxes so that the engine's name uniqueness turns get-or-create
into one atomic step across processes (a 409 conflict means "adopt it").
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

PREFIX = "io.longshore."
MANAGED = PREFIX + "managed"
TASK_ID = PREFIX + "task-id"
PROFILE = PREFIX + "profile"
DEPLOYMENT = PREFIX + "deployment"
PERSIST = PREFIX + "persist"
OWNER = PREFIX + "owner"
CONFIG_HASH = PREFIX + "config-hash"
#: The profile whose warm pool created the sandbox (pool members only; see
#: :mod:`.pools`). A member's labels keep it after a task takes the member:
#: the task is then read from the name (:func:`task_of`).
POOL = PREFIX + "pool"
#: Members the pool asked for when it created this member (re-read at restart).
POOL_SIZE = PREFIX + "pool-size"
#: ``1`` on a warm-pool member, empty on every other sandbox: what lists filter on.
WARM = PREFIX + "warm"
#: Creation time in nanoseconds: the engine's list reports whole seconds only,
#: and "newest first" must be exact without an inspect per container.
CREATED_NS = PREFIX + "created-ns"

MAX_VALUE_LENGTH = 63
UNKNOWN = "unknown"
_DIGEST_CHARS = 12
_SEPARATOR = "--"
_DISALLOWED = re.compile(r"[^A-Za-z0-9_.-]")
# A value ending like a digest suffix is itself suffixed, so an untouched
# value can never equal the sanitized form of a different value.
_LOOKS_SUFFIXED = re.compile(r"--[0-9a-f]{12}\Z")


def _digest(value: str) -> str:
    data = value.encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:_DIGEST_CHARS]


def sanitize(value: str | None) -> str:
    """Maps any string to a valid, injective Docker label value.

    Keeps ``[A-Za-z0-9_.-]``, at most 63 characters; empty or missing becomes
    ``unknown``. A value that had to be changed or cut (or that would be
    ambiguous: the literal ``unknown``, or one ending like a digest suffix)
    gets ``--`` plus 12 hex characters of its SHA-256, so distinct inputs
    never share an output.

    Args:
        value: The raw value, e.g. a task id.

    Returns:
        The label value.
    """
    if not value:
        return UNKNOWN
    kept = _DISALLOWED.sub("_", value)
    untouched = (
        kept == value
        and len(value) <= MAX_VALUE_LENGTH
        and value != UNKNOWN
        and not _LOOKS_SUFFIXED.search(value)
    )
    if untouched:
        return value
    room = MAX_VALUE_LENGTH - len(_SEPARATOR) - _DIGEST_CHARS
    return f"{kept[:room]}{_SEPARATOR}{_digest(value)}"


def container_name(deployment: str, profile: str, task_id: str) -> str:
    """Returns the deterministic container name of a persistent sandbox.

    ``longshore-<deployment>-<profile>-<digest>-<task label>``: the first two
    parts are the label values cut to 20 characters (readability), the digest
    covers the three label values exactly (uniqueness: the sanitizer is
    injective) and the name ends in the task's whole label value, so the task
    of a warm-pool member renamed to this name can be read back from the name
    alone (:func:`task_of`), since its labels cannot change.
    """
    return _key_name(sanitize(deployment), sanitize(profile), sanitize(task_id))


def _key_name(dep_label: str, profile_label: str, task_label: str) -> str:
    key = json.dumps([dep_label, profile_label, task_label])
    return f"{_key_prefix(dep_label, profile_label)}{_digest(key)}-{task_label}"


def _key_prefix(dep_label: str, profile_label: str) -> str:
    return f"longshore-{dep_label[:20]}-{profile_label[:20]}-"


def is_pool_member(values: Mapping[str, str]) -> bool:
    """Whether the labels are a warm-pool member's (taken by a task or not).

    Every other sandbox carries the pool labels empty: a container inherits
    its image's labels, so one started from a snapshot of a member (or from a
    hostile image) would otherwise look like one.
    """
    return values.get(WARM) == "1" and bool(values.get(POOL))


def task_of(values: Mapping[str, str], name: str) -> str:
    """The task label value a sandbox belongs to ("" for a warm member no task took yet).

    An ordinary sandbox carries its task in ``io.longshore.task-id``. A warm
    pool member was created before any task existed (labels are immutable),
    so a task takes it by renaming it to the task's key name; the task is
    then the name's last part, accepted only when the whole name is exactly
    the key name of (the labels' deployment, profile, that task).

    Args:
        values: The container's labels.
        name: The container's name (a leading ``/`` is ignored).
    """
    if not is_pool_member(values):
        return values.get(TASK_ID, "")
    name = name.lstrip("/")
    dep_label, profile_label = values.get(DEPLOYMENT, ""), values.get(PROFILE, "")
    prefix = _key_prefix(dep_label, profile_label)
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    task_label = rest[_DIGEST_CHARS + 1 :]
    if task_label and name == _key_name(dep_label, profile_label, task_label):
        return task_label
    return ""


def pool_member_name(deployment: str, profile_label: str, config_hash: str, slot: int) -> str:
    """The name of warm-pool slot ``slot`` of a pool: at most one member per slot.

    The engine's name uniqueness caps a pool at its size across manager
    processes; a member leaves its slot when a task renames it.

    Args:
        deployment: The deployment (raw).
        profile_label: The profile's label value (``sanitize(profile)``).
        config_hash: The members' config hash.
        slot: 0 to size - 1.
    """
    dep_label = sanitize(deployment)
    key = json.dumps([dep_label, profile_label, config_hash])
    return f"longshore-pool-{dep_label[:20]}-{profile_label[:20]}-{_digest(key)}-{slot}"


def pool_filters(deployment: str, profile_label: str = "") -> list[str]:
    """Label filters selecting a deployment's warm-pool members, optionally one pool's.

    Args:
        deployment: The deployment (raw).
        profile_label: The pool's profile label value (``sanitize(profile)``), or "" for all.
    """
    filters = [f"{MANAGED}=1", f"{DEPLOYMENT}={sanitize(deployment)}"]
    filters.append(f"{WARM}=1")
    if profile_label:
        filters.append(f"{POOL}={profile_label}")
    return filters


def key_filters(deployment: str, profile: str, task_id: str) -> list[str]:
    """Label filters (``key=value``) that select the persistent sandbox of a key."""
    return [
        f"{MANAGED}=1",
        f"{DEPLOYMENT}={sanitize(deployment)}",
        f"{PROFILE}={sanitize(profile)}",
        f"{TASK_ID}={sanitize(task_id)}",
        f"{PERSIST}=true",
    ]


def deployment_filters(deployment: str, profile: str = "") -> list[str]:
    """Label filters selecting a deployment's sandboxes, optionally one profile's."""
    filters = [f"{MANAGED}=1", f"{DEPLOYMENT}={sanitize(deployment)}"]
    if profile:
        filters.append(f"{PROFILE}={sanitize(profile)}")
    return filters


def sandbox_labels(
    *,
    deployment: str,
    profile: str,
    task_id: str,
    persist: bool,
    owner: str,
    config_hash: str,
    created_ns: int = 0,
    pool_size: int = 0,
) -> dict[str, str]:
    """Returns the full label set of a new sandbox.

    With ``pool_size`` the sandbox is a warm-pool member of ``profile``'s pool:
    it carries :data:`POOL` and :data:`POOL_SIZE`, and ``task_id`` should be
    empty (its task-id label is then ``unknown``, which no real task maps to).
    """
    pool = {WARM: "1", POOL: sanitize(profile), POOL_SIZE: str(pool_size)} if pool_size else {}
    return (
        {WARM: "", POOL: "", POOL_SIZE: ""}
        | pool
        | {
            CREATED_NS: str(created_ns or time.time_ns()),
            MANAGED: "1",
            TASK_ID: sanitize(task_id),
            PROFILE: sanitize(profile),
            DEPLOYMENT: sanitize(deployment),
            PERSIST: "true" if persist else "false",
            OWNER: sanitize(owner),
            CONFIG_HASH: config_hash,
        }
    )


def config_hash(
    *,
    image: str,
    cpus: float,
    memory_bytes: int,
    pids_limit: int,
    env_names: Sequence[str],
    volumes: Sequence[Mapping[str, Any]],
    workdir: str,
    network: str,
    read_only_rootfs: bool,
    user: str,
    cap_add: Sequence[str],
) -> str:
    """Fingerprints a resolved spec: SHA-256 over canonical JSON, first 16 hex chars.

    Env contributes its names only, so rotating a secret does not replace the
    sandbox; everything else that shapes the container contributes in full.
    """
    canonical = json.dumps(
        {
            "image": image,
            "cpus": round(float(cpus), 6),
            "memory_bytes": int(memory_bytes),
            "pids_limit": int(pids_limit),
            "env_names": sorted(set(env_names)),
            "volumes": [dict(v) for v in volumes],
            "workdir": workdir,
            "network": network,
            "read_only_rootfs": bool(read_only_rootfs),
            "user": user,
            "cap_add": sorted({c.upper() for c in cap_add}),
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def created_ns(values: Mapping[str, str], fallback_seconds: float = 0.0) -> int:
    """The creation time in ns from the labels, else from the engine's seconds."""
    raw = values.get(CREATED_NS, "")
    return int(raw) if raw.isdigit() else int(fallback_seconds * 1_000_000_000)
