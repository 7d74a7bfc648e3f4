"""Docker client creation, error translation and a span per engine call.

Engine errors become typed service errors here, once: ``NotFound`` →
NOT_FOUND, ``ImageNotFound`` → FAILED_PRECONDITION naming the image, an
unreachable engine → UNAVAILABLE, a conflict on a stopped container →
FAILED_PRECONDITION.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import requests
from opentelemetry import trace

from services.runtime.errors import FailedPrecondition, NotFound, Unavailable
from services.sandbox import labels
from services.sandbox.model import SandboxInfo

tracer = trace.get_tracer(__name__)


def create_client(*, timeout: float = 60.0, pool_size: int = 32) -> docker.DockerClient:
    """Connects to the engine named by ``DOCKER_HOST`` (else the local socket).

    Args:
        timeout: HTTP timeout of ordinary calls, in seconds.
        pool_size: Connections kept open; at least the number of threads that
            call the engine at once (handlers, cleanup workers, the reaper).

    Raises:
        Unavailable: The engine cannot be reached.
    """
    try:
        # from_env reads DOCKER_HOST/DOCKER_CERT_PATH: the engine's own
        # convention, not a Longshore setting.
        return docker.from_env(timeout=int(timeout), max_pool_size=pool_size)
    except docker.errors.DockerException as exc:
        raise Unavailable(f"docker engine unreachable: {exc}") from exc


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is the engine's 409 Conflict."""
    return isinstance(exc, docker.errors.APIError) and exc.status_code == 409


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the engine could not be reached at all."""
    return isinstance(exc, requests.exceptions.ConnectionError | ConnectionError) or (
        isinstance(exc, docker.errors.DockerException)
        and not isinstance(exc, docker.errors.APIError)
        and "connection" in str(exc).lower()
    )


@contextlib.contextmanager
def engine_call(
    op: str, *, resource: str = "", image: str = "", **attributes: Any
) -> Iterator[trace.Span]:
    """Runs one engine call in a span and translates its errors.

    Args:
        op: Span name suffix, e.g. ``containers.create`` (span ``docker.<name>``).
        resource: What the call is about, for NOT_FOUND messages (``sandbox 'abc'``).
        image: The image the call uses, for FAILED_PRECONDITION messages.
        **attributes: Extra span attributes (never secrets).

    Raises:
        NotFound: The container (or other resource) does not exist.
        FailedPrecondition: The image is missing, or the container is not running.
        Unavailable: The engine is unreachable or timed out.
    """
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(f"docker.{op}", attributes=attrs) as span:
        try:
            yield span
        except docker.errors.ImageNotFound as exc:
            what = image or "image"
            raise FailedPrecondition(
                f"image {what!r} does not exist on the engine (the manager never pulls)"
            ) from exc
        except docker.errors.NotFound as exc:
            if image and "image" in str(exc.explanation or "").lower():
                raise FailedPrecondition(
                    f"image {image!r} does not exist on the engine (the manager never pulls)"
                ) from exc
            raise NotFound(f"{resource or 'resource'} not found") from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "not running" in str(exc.explanation or "").lower():
                raise FailedPrecondition(f"{resource or 'sandbox'} is not running") from exc
            raise
        except requests.exceptions.Timeout as exc:
            raise Unavailable(f"docker engine timed out during {op}") from exc
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise Unavailable(f"docker engine unreachable during {op}: {exc}") from exc


_TIMESTAMP = re.compile(
    r"\A(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?\Z"
)


def parse_docker_time(raw: str) -> datetime | None:
    """Parses an engine timestamp (RFC 3339, nanosecond precision) to aware UTC.

    Returns:
        The instant, or None for the zero value (``0001-01-01T00:00:00Z``, a
        container that never finished), an empty string or garbage.
    """
    match = _TIMESTAMP.match(raw.strip()) if raw else None
    if match is None:
        return None
    year, month, day, hour, minute, second, frac, zone = match.groups()
    if int(year) <= 1:
        return None
    micros = int((frac or "0")[:6].ljust(6, "0"))
    try:
        stamp = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, UTC
        )
    except ValueError:
        return None
    if zone and zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        stamp -= sign * offset
    return stamp


LastUsed = Callable[[str], datetime | None]


def info_from_list(row: Mapping[str, Any], last_used: LastUsed) -> SandboxInfo:
    """A domain record from one row of the engine's container list."""
    names = row.get("Names") or [""]
    created = row.get("Created")
    lbl = dict(row.get("Labels") or {})
    return SandboxInfo(
        sandbox_id=str(row["Id"]),
        name=str(names[0]).lstrip("/"),
        state=str(row.get("State", "")),
        image=str(row.get("Image", "")),
        labels=lbl,
        create_time=datetime.fromtimestamp(created, UTC) if created else None,
        last_used_time=last_used(str(row["Id"])),
        created_ns=labels.created_ns(lbl, created or 0),
    )


def info_from_inspect(data: Mapping[str, Any], last_used: LastUsed) -> SandboxInfo:
    """A domain record from a container inspect."""
    state = data.get("State") or {}
    config = data.get("Config") or {}
    lbl = dict(config.get("Labels") or {})
    created = parse_docker_time(str(data.get("Created", "")))
    return SandboxInfo(
        sandbox_id=str(data["Id"]),
        name=str(data.get("Name", "")).lstrip("/"),
        state=str(state.get("Status", "")),
        image=str(config.get("Image", "")),
        labels=lbl,
        create_time=created,
        start_time=parse_docker_time(str(state.get("StartedAt", ""))),
        finish_time=parse_docker_time(str(state.get("FinishedAt", ""))),
        last_used_time=last_used(str(data["Id"])),
        created_ns=labels.created_ns(lbl, created.timestamp() if created else 0.0),
    )
