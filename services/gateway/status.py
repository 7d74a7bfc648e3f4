"""GatewayService: the gateway's version, each backend's gRPC health, the gateway's traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from longshore.gateway.v1 import gateway_service_pb2, gateway_service_pb2_grpc

from services.gateway.auth import Gate
from services.gateway.forwarding import Backend
from services.runtime.interceptors import HEALTH_DETAIL_KEY, VERSION_KEY
from services.runtime.rpc_metrics import CallWindow, TrafficFigures
from services.runtime.version import __version__

_GET_STATUS = "/longshore.gateway.v1.GatewayService/GetStatus"
BackendHealth = gateway_service_pb2.BackendHealth


@dataclass(frozen=True)
class Probe:
    """One backend's health as a probe saw it."""

    health: gateway_service_pb2.BackendHealth.ValueType
    detail: str
    latency_ms: float
    version: str = ""


async def probe(channel: aio.Channel, timeout: float) -> Probe:
    """Ask a backend's health service whether the whole server is SERVING.

    Never raises: an unreachable backend is UNREACHABLE with the error as detail.
    With several kanban replicas, one of them (round robin) answers.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    started = time.perf_counter()
    call = stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    try:
        reply = await call
        trailing = await call.trailing_metadata()
    except grpc.RpcError as exc:
        latency = (time.perf_counter() - started) * 1000
        upstream = isinstance(exc, aio.AioRpcError)
        code = exc.code().name if upstream else "ERROR"
        details = exc.details() if upstream else str(exc)
        return Probe(BackendHealth.BACKEND_HEALTH_UNREACHABLE, f"{code}: {details}", latency)
    latency = (time.perf_counter() - started) * 1000
    # Every Longshore server tags its responses with its release (runtime interceptor).
    trailers = {key: str(value) for key, value in trailing or ()}
    version = trailers.get(VERSION_KEY, "")
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return Probe(BackendHealth.BACKEND_HEALTH_SERVING, "", latency, version)
    # The backend says why (its engine or database unreachable) when it knows.
    status = trailers.get(HEALTH_DETAIL_KEY) or health_pb2.HealthCheckResponse.ServingStatus.Name(
        reply.status
    )
    return Probe(BackendHealth.BACKEND_HEALTH_NOT_SERVING, status, latency, version)


class StatusServicer(gateway_service_pb2_grpc.GatewayServiceServicer):
    """Implements GatewayService.GetStatus."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        gate: Gate,
        deployment: str,
        probe_timeout: float,
        traffic: CallWindow | None = None,
    ) -> None:
        """Create the servicer.

        Args:
            backends: Backends to report, in the order reported.
            gate: Admits calls (GetStatus needs the `read` scope).
            deployment: The deployment name reported.
            probe_timeout: Deadline of each health probe, in seconds.
            traffic: The gateway server's call window (headline figures);
                None reports no traffic.
        """
        self._backends = list(backends)
        self._gate = gate
        self._deployment = deployment
        self._timeout = probe_timeout
        self._traffic = traffic

    async def GetStatus(
        self,
        request: gateway_service_pb2.GetStatusRequest,
        context: aio.ServicerContext[
            gateway_service_pb2.GetStatusRequest, gateway_service_pb2.GetStatusResponse
        ],
    ) -> gateway_service_pb2.GetStatusResponse:
        """Report the version, every backend's health (probed in parallel) and the traffic."""
        principal = self._gate.admit(context.invocation_metadata() or (), _GET_STATUS)
        probes = await asyncio.gather(*(probe(b.channel, self._timeout) for b in self._backends))
        now = Timestamp()
        now.GetCurrentTime()
        response = gateway_service_pb2.GetStatusResponse(
            version=__version__,
            deployment=self._deployment,
            check_time=now,
            scopes=sorted(principal.scopes),
        )
        if self._traffic is not None:
            # This call has not finished: it is in in_flight_calls, not in calls.
            response.traffic.CopyFrom(traffic_proto(self._traffic.figures()))
        for backend, result in zip(self._backends, probes, strict=True):
            response.backends.append(
                gateway_service_pb2.BackendStatus(
                    name=backend.name,
                    address=backend.address,
                    health=result.health,
                    detail=result.detail,
                    latency_ms=round(result.latency_ms, 3),
                    version=result.version,
                )
            )
        return response


def traffic_proto(figures: TrafficFigures) -> gateway_service_pb2.GatewayTraffic:
    """The headline figures of a call window as the contract carries them."""
    return gateway_service_pb2.GatewayTraffic(
        window_seconds=figures.window_seconds,
        calls=figures.calls,
        calls_per_second=round(figures.calls_per_second, 3),
        p50_latency_ms=round(figures.p50_ms, 3),
        p99_latency_ms=round(figures.p99_ms, 3),
        errors=figures.errors,
        errors_by_code=dict(figures.errors_by_code),
        in_flight_calls=figures.in_flight,
        held_streams=figures.held_streams,
    )
