"""A real OTLP/gRPC metrics receiver for tests (the trace receiver is tests/support/otlp.py).

A meter provider exports to it exactly as to a collector; tests read the
flattened data points, waiting on a condition instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

from tests.support.otlp import key_values


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point: its metric, its service, its attributes and its value.

    ``value`` is the number of a sum or gauge point, and the count of a
    histogram point (whose sum is ``total``).
    """

    metric: str
    service_name: str
    attributes: dict[str, Any]
    value: float
    total: float = 0.0


class OtlpMetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC metrics receiver on ``127.0.0.1``, keeping points in memory."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self._cond = threading.Condition()
        self._points: list[ReceivedPoint] = []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="otlp-metrics"),
            options=[("grpc.so_reuseport", 0)],
        )
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port(f"{host}:0")
        self.host = host

    @property
    def endpoint(self) -> str:
        """``http://host:port``, for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> OtlpMetricsReceiver:
        self._server.start()
        return self

    def stop(self, grace: float = 0.5) -> None:
        self._server.stop(grace).wait()

    def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.ServicerContext,
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        del context
        received: list[ReceivedPoint] = []
        for resource_metrics in request.resource_metrics:
            service = str(key_values(resource_metrics.resource.attributes).get("service.name"))
            for scope in resource_metrics.scope_metrics:
                for metric in scope.metrics:
                    which = metric.WhichOneof("data")
                    for point in getattr(metric, which).data_points:
                        attrs = key_values(point.attributes)
                        if which == "histogram":
                            value, total = float(point.count), point.sum
                        else:
                            value = point.as_double or float(point.as_int)
                            total = 0.0
                        received.append(ReceivedPoint(metric.name, service, attrs, value, total))
        with self._cond:
            self._points.extend(received)
            self._cond.notify_all()
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def wait_for(
        self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float = 10.0
    ) -> list[ReceivedPoint]:
        """Block until ``predicate(points)`` holds, re-checking on every export.

        Raises:
            TimeoutError: It did not hold in time; lists the metric names seen.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._points)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = sorted({p.metric for p in snapshot})
                    raise TimeoutError(f"metrics did not match within {timeout}s: {names}")
                self._cond.wait(remaining)
