"""OpenTelemetry setup shared by every service.

One tracer provider per process with ``service.name=longshore-<service>``
(the same for every replica), exporting over OTLP/gRPC when an endpoint is
configured. Health checks are filtered out of traces by the server and channel
interceptors (see :mod:`services.runtime.interceptors`).

With nothing to export to, a service still gives every call, task and log
line a trace id, but records nothing: :class:`IdOnlyTracerProvider` hands
out spans that carry ids only. A recorded span nobody exports cost every
call ~10 us and every held call (a long poll, a stream) ~2.9 KB for its
whole life, in every service the call passes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from services.runtime.version import __version__

log = logging.getLogger(__name__)


def service_resource(service: str) -> Resource:
    """Returns the resource identifying ``service`` in traces."""
    return Resource.create(
        {
            "service.name": f"longshore-{service}",
            "service.namespace": "longshore",
            "service.version": __version__,
        }
    )


class _IdOnlyTracer(trace.Tracer):
    """Spans that carry a trace id and a span id, and record nothing."""

    def __init__(self, ids: RandomIdGenerator) -> None:
        self._ids = ids

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            # In the caller's trace, with its sampling decision: a service
            # further on that exports records what the caller asked for.
            return NonRecordingSpan(
                SpanContext(
                    parent.trace_id,
                    self._ids.generate_span_id(),
                    is_remote=False,
                    trace_flags=parent.trace_flags,
                    trace_state=parent.trace_state,
                )
            )
        return NonRecordingSpan(
            SpanContext(
                self._ids.generate_trace_id(),
                self._ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.SAMPLED),
            )
        )

    # The API types this with its private context-manager class; any
    # context manager works (and as a decorator, as contextmanager's does).
    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Mapping[str, Any] | None = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(name, context)
        with trace.use_span(span, end_on_exit=end_on_exit) as current:
            yield current


class IdOnlyTracerProvider(trace.TracerProvider):
    """The provider of a service that exports no spans: ids for every call, nothing kept.

    A root span starts a new trace (sampled, so a downstream service that
    does export records it); a child keeps its parent's trace, flags and state.
    """

    def __init__(self) -> None:
        self._tracer = _IdOnlyTracer(RandomIdGenerator())

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Mapping[str, Any] | None = None,
    ) -> trace.Tracer:
        return self._tracer

    def shutdown(self) -> None:
        """Nothing to flush."""

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Nothing to flush."""
        return True


def configure_tracing(
    service: str,
    *,
    endpoint: str = "",
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider | IdOnlyTracerProvider:
    """Creates the process's tracer provider.

    Args:
        service: Short service name; becomes ``service.name=longshore-<service>``.
        endpoint: OTLP/gRPC endpoint (``http://host:4317``); empty = no export.
        exporter: An explicit exporter (tests); overrides ``endpoint``.
        set_global: Install it as the global provider (once per process).

    Returns:
        The provider; call ``shutdown()`` on it at exit to flush spans. With
        neither an endpoint nor an exporter, an :class:`IdOnlyTracerProvider`.
    """
    provider: TracerProvider | IdOnlyTracerProvider
    if exporter is None and endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if exporter is not None:
        provider = TracerProvider(resource=service_resource(service))
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        log.info("tracing enabled", extra={"otlp_endpoint": endpoint or "custom exporter"})
    else:
        provider = IdOnlyTracerProvider()
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
