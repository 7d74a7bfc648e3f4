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

    Readable parts are cut short; the digest over the exact triple makes the
    name unique per (deployment, profile, task).
    """
    key = json.dumps([deployment, profile, task_id], ensure_ascii=False)
    parts = [_name_part(deployment), _name_part(profile), _name_part(task_id)]
    return "longshore-" + "-".join(parts) + "-" + _digest(key)


def _name_part(value: str) -> str:
    return (_DISALLOWED.sub("_", value) or "x")[:20]


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
) -> dict[str, str]:
    """Returns the full label set of a new sandbox."""
    return {
        CREATED_NS: str(created_ns or time.time_ns()),
        MANAGED: "1",
        TASK_ID: sanitize(task_id),
        PROFILE: sanitize(profile),
        DEPLOYMENT: sanitize(deployment),
        PERSIST: "true" if persist else "false",
        OWNER: sanitize(owner),
        CONFIG_HASH: config_hash,
    }


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
