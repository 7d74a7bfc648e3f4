"""The one entry of every ``python -m services.<name>``: :func:`run_service`.

Every service starts the same way: settings → logging → tracing → build the
parts → bind → serve until SIGTERM/SIGINT → drain → close the parts → flush
the telemetry providers. A service's ``__main__`` supplies only its settings
model and a build callback; the exits are the same for all of them:

* a settings error, or anything the build refuses (a port in use, a malformed
  key): one line ``<service>: <message>`` on stderr, last, after closing what
  was built, and exit :data:`~services.runtime.server_base.EXIT_CANNOT_START`,
  which a supervisor does not mistake for a crash;
* a clean stop after a signal: exit 0;
* a stop that outlasts ``shutdown_timeout_seconds``: every thread's stack on
  stderr, then exit 1;
* any other exception: it propagates (a traceback is the right report for a
  bug), and what was built is still closed and the providers still flushed.
"""

from __future__ import annotations

import faulthandler
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from opentelemetry import trace

from services.runtime.collector import settle_for_serving
from services.runtime.config import BaseSettings, SettingsError, load_settings
from services.runtime.logs import configure_logging
from services.runtime.metrics import ServiceMeterProvider, configure_metrics
from services.runtime.server_base import EXIT_CANNOT_START, BindError, stop_on_signal
from services.runtime.tracing import configure_tracing

log = logging.getLogger(__name__)

S = TypeVar("S", bound=BaseSettings)


class Servable(Protocol):
    """What :func:`run_service` serves: a gRPC server
    (:class:`~services.runtime.aio_serving.AioServer`) or the dashboard's HTTP server."""

    def serve(self) -> None:
        """Starts (unless started), serves until :meth:`request_stop`, drains, returns."""

    def request_stop(self) -> None:
        """Asks :meth:`serve` to return; must be safe from a signal handler."""


class Provider(Protocol):
    """A telemetry provider flushed at exit (the tracer provider, a meter provider)."""

    def shutdown(self) -> object:
        """Flushes what is buffered and stops exporting."""


@dataclass
class ServiceParts:
    """What a build callback receives: the providers, and where to leave closers.

    Attributes:
        service: The short service name (``sandbox``, ``gateway``, ...).
        tracer_provider: The process's tracer provider (already global).
        meters: The process's meter provider (OTLP and ``/metrics`` as
            configured); ``meters.recording_meter(name)`` is the meter to
            inject, or None when nothing reads it.
        providers: Flushed and shut down, in order, whenever the process
            leaves :func:`run_service`: the meter provider, then the tracer
            provider.
    """

    service: str
    tracer_provider: trace.TracerProvider
    meters: ServiceMeterProvider
    providers: list[Provider] = field(default_factory=list)
    _closers: list[Callable[[], object]] = field(default_factory=list, repr=False)

    def close_on_exit(self, closer: Callable[[], object]) -> None:
        """Runs ``closer`` after the server drained, or at once when it never started.

        Closers run last-registered first (like :class:`contextlib.ExitStack`),
        so a part is closed before what it was built on; one that fails is
        logged and the others still run.
        """
        self._closers.append(closer)

    def close(self) -> None:
        """Runs the closers (last registered first); safe to call more than once.

        A closer that takes longer than :data:`SLOW_CLOSE_SECONDS` is logged
        with its duration, so a slow shutdown names the part that held it.
        """
        while self._closers:
            closer = self._closers.pop()
            started = time.monotonic()
            try:
                closer()
            except Exception:
                log.exception("closing a part failed", extra={"closer": _name(closer)})
            took = time.monotonic() - started
            if took > SLOW_CLOSE_SECONDS:
                log.warning(
                    "closing a part was slow",
                    extra={"closer": _name(closer), "seconds": round(took, 2)},
                )


#: A closer slower than this is logged (a shutdown's parts normally take ms).
SLOW_CLOSE_SECONDS = 2.0


def _bounded(request_stop: Callable[[], None], timeout: float) -> Callable[[], None]:
    """``request_stop`` that also arms the shutdown bound.

    A drain, a closer, a telemetry flush or a worker thread the interpreter
    joins at exit that hangs on the engine or a peer would otherwise leave a
    process that ignores SIGTERM and says nothing. ``timeout`` seconds after
    the first stop request, faulthandler writes every thread's stack to
    stderr and ends the process with exit 1. The bound is never cancelled: it
    covers the interpreter's own exit too, and dies with the process.
    """
    armed = False

    def stop() -> None:
        nonlocal armed
        if not armed and timeout > 0:
            armed = True
            faulthandler.dump_traceback_later(timeout, exit=True)
        request_stop()

    return stop


def _name(closer: Callable[[], object]) -> str:
    qualname = getattr(closer, "__qualname__", "") or repr(closer)
    return f"{getattr(closer, '__module__', '')}.{qualname}".lstrip(".")


#: Exceptions every build may raise to refuse to start (one line, exit 2).
_ALWAYS_REFUSED: tuple[type[Exception], ...] = (SettingsError, BindError)


def run_service(
    service: str,
    model: type[S],
    build: Callable[[S, ServiceParts], Servable],
    *,
    refusals: tuple[type[Exception], ...] = (),
) -> int:
    """Runs one service process from its settings to its exit code.

    Args:
        service: Short name; the prefix of the one-line refusals and the
            ``service.name`` of its telemetry.
        model: The settings model (read once, from the environment and the
            config file).
        build: Builds and binds the service's parts from the settings,
            registering on the :class:`ServiceParts` what must be closed; it
            returns the server to serve. It may do what must happen before
            serving (a startup sweep) and start the server itself when
            something must follow the start (the reaper).
        refusals: Further exception types the build raises for an operator
            (e.g. a malformed API key); with :class:`SettingsError` and
            :class:`BindError` they exit :data:`EXIT_CANNOT_START` with one line.

    Returns:
        The process's exit code.
    """
    try:
        settings = load_settings(model)
    except SettingsError as exc:
        return _refuse(service, exc)
    configure_logging(service, settings.log_level)
    tracer_provider = configure_tracing(service, endpoint=settings.otel_endpoint)
    try:
        meters = configure_metrics(
            service,
            otlp_endpoint=settings.otel_endpoint,
            prometheus_listen=settings.metrics_listen,
        )
    except BindError as exc:
        tracer_provider.shutdown()
        return _refuse(service, exc)
    parts = ServiceParts(service, tracer_provider, meters, providers=[meters, tracer_provider])
    refused: Exception | None = None
    try:
        try:
            server = build(settings, parts)
        except (*_ALWAYS_REFUSED, *refusals) as exc:
            refused = exc
        else:
            # The handlers only ask the server to stop; the drain runs here,
            # on the main thread, once serve() returns.
            stop = _bounded(server.request_stop, settings.shutdown_timeout_seconds)
            settle_for_serving()
            with stop_on_signal(stop):
                server.serve()
    finally:
        parts.close()
        for provider in parts.providers:
            try:
                provider.shutdown()
            except Exception:
                log.exception("shutting down a telemetry provider failed")
    if refused is not None:
        # Last, after the closers and the flush: a supervisor shows the last line.
        return _refuse(service, refused)
    return 0


def _refuse(service: str, exc: Exception) -> int:
    """One line, no traceback: the operator needs the reason, not a stack."""
    message = " ".join(str(exc).split()) or type(exc).__name__
    sys.stderr.write(f"{service}: {message}\n")
    sys.stderr.flush()
    return EXIT_CANNOT_START
