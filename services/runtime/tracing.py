"""OpenTelemetry setup shared by every service.

One tracer provider per process with ``service.name=longshore-<service>``
(the same for every replica), exporting over OTLP/gRPC when an endpoint is
configured. Health checks are filtered out of traces by the server and channel
interceptors (see :mod:`services.runtime.interceptors`).
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

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


def configure_tracing(
    service: str,
    *,
    endpoint: str = "",
    exporter: SpanExporter | None = None,
    set_global: bool = True,
) -> TracerProvider:
    """Creates the process's tracer provider.

    Args:
        service: Short service name; becomes ``service.name=longshore-<service>``.
        endpoint: OTLP/gRPC endpoint (``http://host:4317``); empty = no export.
        exporter: An explicit exporter (tests); overrides ``endpoint``.
        set_global: Install it as the global provider (once per process).

    Returns:
        The provider; call ``shutdown()`` on it at exit to flush spans.
    """
    provider = TracerProvider(resource=service_resource(service))
    if exporter is None and endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=endpoint.startswith("http://"))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        log.info("tracing enabled", extra={"otlp_endpoint": endpoint or "custom exporter"})
    if set_global:
        trace.set_tracer_provider(provider)
    return provider
