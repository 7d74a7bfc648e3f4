"""RPC metrics exported over OTLP/gRPC to a real in-process receiver."""

from __future__ import annotations

import grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

from services.runtime.aio_serving import build_aio_server
from services.runtime.metrics import configure_metrics
from tests.integration.runtime.test_runtime_aio_server import AsyncGateway, gateway
from tests.support.otlp_metrics import OtlpMetricsReceiver, ReceivedPoint


def test_rpc_metrics_reach_an_otlp_collector() -> None:
    receiver = OtlpMetricsReceiver().start()
    # An hour between exports: only the flush below sends, so what arrives is
    # exactly what was recorded before it.
    provider = configure_metrics(
        "otlp-test",
        otlp_endpoint=receiver.endpoint,
        export_interval_seconds=3600,
        set_global=False,
    )
    server = build_aio_server(
        [gateway(AsyncGateway("not_found"))],
        listen="127.0.0.1:0",
        meter=provider.get_meter("test"),
    )
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            for _ in range(2):
                try:
                    gw_grpc.GatewayServiceStub(channel).GetStatus(
                        gw_pb.GetStatusRequest(), timeout=5
                    )
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND
        assert provider.force_flush()

        def durations(points: list[ReceivedPoint]) -> list[ReceivedPoint]:
            return [
                p
                for p in points
                if p.metric == "rpc.server.duration"
                and p.attributes.get("rpc.method") == "GetStatus"
            ]

        points = receiver.wait_for(lambda got: bool(durations(got)))
    finally:
        server.stop(0)
        provider.shutdown()
        receiver.stop()
    (point,) = durations(points)
    assert point.service_name == "longshore-otlp-test"
    assert point.value == 2
    assert point.attributes["rpc.grpc.status_code"] == 5
    assert point.attributes["rpc.service"] == "longshore.gateway.v1.GatewayService"
