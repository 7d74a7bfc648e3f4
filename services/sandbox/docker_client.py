"""Docker client creation, error translation and a span per engine call.

Engine errors become typed service errors here, once: ``NotFound`` →
NOT_FOUND, ``ImageNotFound`` → FAILED_PRECONDITION naming the image, an
unreachable engine → UNAVAILABLE, a conflict on a stopped container →
FAILED_PRECONDITION.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import docker.errors
import requests
from opentelemetry import trace

import docker
from services.runtime.errors import FailedPrecondition, NotFound, Unavailable

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
