"""OpenTelemetry metrics setup shared by every service.

One meter provider per process, with the same resource as traces
(``service.name=longshore-<service>``), read by up to two readers:

* an OTLP/gRPC periodic exporter when an endpoint is configured (the same
  collector that receives the traces, ``OTEL_EXPORTER_OTLP_ENDPOINT``);
* a Prometheus text endpoint (``GET /metrics``) when ``metrics_listen`` is
  set, served from a registry of this provider's own, so two providers in
  one process (tests) never see each other's series.

Services do not reach for the global meter: the provider's meters are
injected into what records (the RPC interceptors, ``SandboxMetrics``,
``KanbanMetrics``), so a test can give each its own provider. Every metric is
listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from wsgiref.simple_server import WSGIServer

from opentelemetry import metrics
from opentelemetry.metrics import Meter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

from services.runtime.server_base import BindError, check_listen
from services.runtime.tracing import service_resource

log = logging.getLogger(__name__)

#: Bucket bounds of every histogram in milliseconds: RPCs here take from a
#: tenth of a millisecond (a cached read) to minutes (a held long poll, a
#: long exec), which the SDK's default bounds (0 to 10 s, in steps of 5 ms
#: first) would crowd into one or two buckets.
MILLISECOND_BOUNDS: tuple[float, ...] = (
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
)
#: How often the OTLP reader exports (the collector's resolution).
DEFAULT_EXPORT_INTERVAL_SECONDS = 15.0


class ServiceMeterProvider(MeterProvider):
    """The SDK meter provider plus the Prometheus endpoint it serves, if any.

    Attributes:
        metrics_address: ``host:port`` the ``/metrics`` endpoint is bound to
            (the real port when asked for port 0); ``""`` when not served.
    """

    metrics_address: str = ""
    _http: WSGIServer | None = None
    _http_thread: threading.Thread | None = None
    _read: bool = False

    def recording_meter(self, name: str) -> Meter | None:
        """The meter to inject into what records, or None when no reader reads it.

        Without a reader the SDK still builds and cleans every measurement;
        a None meter lets the RPC interceptor stay out of the call path.
        """
        return self.get_meter(name) if self._read else None

    def shutdown(self, timeout_millis: float = 30_000) -> None:
        """Stops the ``/metrics`` endpoint, then flushes and stops the readers."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            if self._http_thread is not None:
                self._http_thread.join(timeout=5)
            self._http = None
        super().shutdown(timeout_millis=timeout_millis)


def configure_metrics(
    service: str,
    *,
    otlp_endpoint: str = "",
    prometheus_listen: str = "",
    readers: Sequence[MetricReader] = (),
    export_interval_seconds: float = DEFAULT_EXPORT_INTERVAL_SECONDS,
    set_global: bool = True,
) -> ServiceMeterProvider:
    """Creates the process's meter provider.

    Args:
        service: Short service name; becomes ``service.name=longshore-<service>``.
        otlp_endpoint: OTLP/gRPC endpoint (``http://host:4317``); empty = no export.
        prometheus_listen: ``host:port`` for ``GET /metrics`` (port 0 = any
            free port, see ``metrics_address``); empty = not served.
        readers: Further readers (tests: an in-memory reader).
        export_interval_seconds: How often the OTLP reader exports.
        set_global: Install it as the global provider (once per process), so
            libraries that use the global meter report through it too.

    Returns:
        The provider; call ``shutdown()`` on it at exit to flush and to close
        the endpoint.

    Raises:
        BindError: ``prometheus_listen`` cannot be bound (the message says why).
    """
    all_readers: list[MetricReader] = list(readers)
    http: tuple[WSGIServer, threading.Thread, str] | None = None
    if prometheus_listen:
        reader, http = _prometheus(prometheus_listen)
        all_readers.append(reader)
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(
            endpoint=otlp_endpoint, insecure=otlp_endpoint.startswith("http://")
        )
        all_readers.append(
            PeriodicExportingMetricReader(
                exporter, export_interval_millis=export_interval_seconds * 1000
            )
        )
    provider = ServiceMeterProvider(
        metric_readers=all_readers,
        resource=service_resource(service),
        views=[
            View(
                instrument_type=Histogram,
                instrument_unit="ms",
                aggregation=ExplicitBucketHistogramAggregation(MILLISECOND_BOUNDS),
            )
        ],
        # Exemplars would cost a span lookup on every RPC recorded; nothing
        # here reads them (traces are found by their own attributes).
        exemplar_filter=AlwaysOffExemplarFilter(),
        # The service's __main__ shuts it down (flushing) on SIGTERM; an
        # atexit handler would flush a second time at interpreter exit.
        shutdown_on_exit=False,
    )
    provider._read = bool(all_readers)
    if http is not None:
        provider._http, provider._http_thread, provider.metrics_address = http
        log.info("metrics endpoint serving", extra={"address": provider.metrics_address})
    if otlp_endpoint:
        log.info("metrics export enabled", extra={"otlp_endpoint": otlp_endpoint})
    if set_global:
        metrics.set_meter_provider(provider)
    return provider


def _prometheus(listen: str) -> tuple[MetricReader, tuple[WSGIServer, threading.Thread, str]]:
    """A Prometheus reader on its own registry and the HTTP server exposing it."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, ProcessCollector, start_wsgi_server

    # Same check as the gRPC servers: "address already in use" as one line,
    # before anything is started.
    check_listen(listen)
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    registry = CollectorRegistry(auto_describe=False)
    # CPU seconds, resident memory and open fds of this process, next to ours.
    ProcessCollector(registry=registry)
    reader = PrometheusMetricReader(registry=registry)
    try:
        server, thread = start_wsgi_server(int(port_text), addr=host, registry=registry)
    except OSError as exc:
        # Taken between the check and the bind (another process was faster).
        raise BindError(listen, (exc.strerror or str(exc)).lower()) from None
    bound_host, bound_port = server.server_address[:2]
    shown = "127.0.0.1" if bound_host in ("0.0.0.0", "::", "") else str(bound_host)
    if ":" in shown:
        shown = f"[{shown}]"
    return reader, (server, thread, f"{shown}:{bound_port}")
