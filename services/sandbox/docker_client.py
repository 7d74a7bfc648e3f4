"""Docker client creation, error translation and a span per engine call.

Engine errors become typed service errors here, once, and never INTERNAL:

* the engine cannot be reached (connection refused or reset, a timeout, a
  broken stream) → UNAVAILABLE naming the engine;
* ``ImageNotFound``, or a 404 about an image → FAILED_PRECONDITION naming the
  image (the manager never pulls); any other 404 → NOT_FOUND naming the resource;
* 400 → INVALID_ARGUMENT with the engine's message (first 200 characters);
* 409 on a container name that another acquire just took (a create, or a
  warm member's rename) → :class:`NameTaken`
  (ABORTED; the manager adopts that container); any other 409 (not running,
  removal in progress) → FAILED_PRECONDITION with the engine's message;
* any other 4xx → FAILED_PRECONDITION with the engine's message;
* 5xx: 502/503/504 (the engine's own dependencies are down) → UNAVAILABLE, any
  other (the runtime failed the operation, e.g. ``OCI runtime create failed``)
  → FAILED_PRECONDITION with the engine's message.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import requests
from opentelemetry import trace

from services.runtime.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    quote,
)
from services.sandbox import labels
from services.sandbox.model import SandboxInfo

log = logging.getLogger(__name__)

tracer = trace.get_tracer(__name__)

#: How much of the engine's own message an error carries.
ENGINE_MESSAGE_CHARS = 200


class NameTaken(Aborted):
    """The engine refused a create because the container name is in use (409)."""


def engine_message(exc: BaseException) -> str:
    """The engine's explanation of an error, at most 200 characters."""
    raw = exc.explanation if isinstance(exc, docker.errors.APIError) else None
    text = " ".join(str(raw or exc).split())
    if len(text) > ENGINE_MESSAGE_CHARS:
        return text[:ENGINE_MESSAGE_CHARS] + "…"
    return text


def explain(exc: BaseException) -> str:
    """A short text of any error for logs: a typed error's message, else the engine's."""
    if isinstance(exc, ServiceError):
        return exc.message
    return engine_message(exc)


def unreachable_reason(exc: BaseException) -> str:
    """A short reason why the engine could not be reached (the innermost OS error)."""
    seen: set[int] = set()
    inner: BaseException | None = exc
    best: BaseException = exc
    while inner is not None and id(inner) not in seen:
        seen.add(id(inner))
        if isinstance(inner, OSError) and inner.strerror:
            best = inner
        nested = inner.args[0] if inner.args and isinstance(inner.args[0], BaseException) else None
        if nested is None and len(inner.args) > 1 and isinstance(inner.args[1], BaseException):
            nested = inner.args[1]
        inner = nested or inner.__cause__ or inner.__context__
    if isinstance(best, OSError) and best.strerror:
        return best.strerror.lower()
    if isinstance(exc, requests.exceptions.Timeout):
        return "timed out"
    return engine_message(exc)


#: API version used when the engine cannot be asked at start: Debian's engine
#: 20.10 speaks 1.41, and every later engine still accepts it.
FALLBACK_API_VERSION = "1.41"


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
        if not isinstance(exc.__context__, requests.exceptions.ConnectionError):
            raise Unavailable(f"docker engine unreachable: {unreachable_reason(exc)}") from exc
        # The engine is down right now ("auto" negotiates the API version with
        # it). Start anyway on the oldest API we support, so the manager serves,
        # reports NOT_SERVING with the reason and recovers by itself when the
        # engine returns, instead of exiting into a crash loop.
        log.warning(
            "docker engine unreachable at start; using API %s until it answers",
            FALLBACK_API_VERSION,
            extra={"error": unreachable_reason(exc)},
        )
        try:
            return docker.from_env(
                version=FALLBACK_API_VERSION, timeout=int(timeout), max_pool_size=pool_size
            )
        except docker.errors.DockerException as again:
            raise Unavailable(f"docker engine unreachable: {unreachable_reason(again)}") from again


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is the engine's 409 Conflict (raw or translated)."""
    return isinstance(exc, NameTaken) or (
        isinstance(exc, docker.errors.APIError) and exc.status_code == 409
    )


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the engine could not be reached at all."""
    if isinstance(exc, Unavailable):
        return True
    return isinstance(exc, requests.exceptions.ConnectionError | ConnectionError) or (
        isinstance(exc, docker.errors.DockerException)
        and not isinstance(exc, docker.errors.APIError)
        and "connection" in str(exc).lower()
    )


def translate(
    exc: BaseException, op: str, *, resource: str = "", image: str = ""
) -> ServiceError | None:
    """The typed error an engine failure stands for (None: not an engine failure).

    Args:
        exc: What the docker client raised.
        op: The engine call, e.g. ``containers.create``.
        resource: What the call is about, for NOT_FOUND messages (``sandbox 'abc'``).
        image: The image the call uses, for FAILED_PRECONDITION messages.
    """
    what = resource or "resource"
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, docker.errors.ImageNotFound):
        return _missing_image(image)
    if isinstance(exc, docker.errors.APIError) and exc.status_code is not None:
        status = int(exc.status_code)
        message = engine_message(exc)
        if status == 404:
            if image and "image" in message.lower():
                return _missing_image(image)
            return NotFound(f"{what} not found")
        if status == 400:
            return InvalidArgument(f"docker engine rejected {op}: {message}")
        if status == 409:
            lowered = message.lower()
            if "is already in use" in lowered and op in ("containers.create", "containers.rename"):
                return NameTaken(f"container name taken during {op}: {message}")
            if "not running" in lowered:
                return FailedPrecondition(f"{resource or 'sandbox'} is not running")
            return FailedPrecondition(f"docker engine refused {op} (conflict): {message}")
        if status in (502, 503, 504):
            return Unavailable(f"docker engine unavailable during {op}: {message}")
        if status >= 500:
            return FailedPrecondition(f"docker engine failed {op}: {message}")
        return FailedPrecondition(f"docker engine refused {op} ({status}): {message}")
    if isinstance(exc, requests.exceptions.Timeout):
        return Unavailable(f"docker engine timed out during {op}")
    if isinstance(
        exc,
        requests.exceptions.ConnectionError
        | requests.exceptions.ChunkedEncodingError
        | ConnectionError
        | TimeoutError,
    ):
        return Unavailable(f"docker engine unreachable during {op}: {unreachable_reason(exc)}")
    if isinstance(exc, docker.errors.InvalidArgument):
        return InvalidArgument(f"docker client rejected {op}: {engine_message(exc)}")
    if isinstance(exc, docker.errors.DockerException | requests.exceptions.RequestException):
        return Unavailable(f"docker engine call {op} failed: {engine_message(exc)}")
    return None


def _missing_image(image: str) -> FailedPrecondition:
    what = quote(image) if image else "image"
    return FailedPrecondition(
        f"image {what} does not exist on the engine (the manager never pulls)"
    )


@contextlib.contextmanager
def engine_call(
    op: str, *, resource: str = "", image: str = "", **attributes: Any
) -> Iterator[trace.Span]:
    """Runs one engine call in a span and translates its errors (see the module doc).

    Args:
        op: Span name suffix, e.g. ``containers.create`` (span ``docker.<name>``).
        resource: What the call is about, for NOT_FOUND messages (``sandbox 'abc'``).
        image: The image the call uses, for FAILED_PRECONDITION messages.
        **attributes: Extra span attributes (never secrets).

    Raises:
        NotFound: The container (or other resource) does not exist.
        InvalidArgument: The engine rejected a value (400).
        NameTaken: A create lost the race for a container name.
        FailedPrecondition: The image is missing, the container is not running,
            or the engine refused or failed the operation.
        Unavailable: The engine is unreachable or timed out.
    """
    attrs = {k: v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(f"docker.{op}", attributes=attrs) as span:
        try:
            yield span
        except ServiceError:
            raise
        except Exception as exc:
            typed = translate(exc, op, resource=resource, image=image)
            if typed is None:
                raise
            raise typed from exc


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
        user=str(config.get("User") or ""),
    )
