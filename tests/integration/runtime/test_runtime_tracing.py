"""A client -> server -> downstream chain makes one trace with correct parents."""

from __future__ import annotations

from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from services.runtime.channels import open_aio_channel, open_channel
from services.runtime.testing import serve_in_process
from services.runtime.tracing import service_resource
from tests.integration.runtime.demo_services import FailingGateway, gateway_service

METHOD = "/longshore.gateway.v1.GatewayService/GetStatus"


class ForwardingGateway(FailingGateway):
    """Forwards over a channel traced by an explicit provider (not the global one)."""

    def __init__(self, downstream: str, provider: object) -> None:
        super().__init__("forward", downstream)
        self.provider = provider

    async def GetStatus(self, request, context):
        async with open_aio_channel(self.downstream, tracer_provider=self.provider) as channel:
            reply = await gw_grpc.GatewayServiceStub(channel).GetStatus(request, timeout=5)
        return gw_pb.GetStatusResponse(version="front+" + reply.version)


def test_chain_produces_one_trace_with_parent_child_spans(otlp_receiver) -> None:
    exporter = OTLPSpanExporter(endpoint=otlp_receiver.endpoint, insecure=True)
    provider = TracerProvider(resource=service_resource("demo"))
    # Export synchronously so the test need not wait for a batch.
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with (
            serve_in_process(
                [gateway_service(FailingGateway("ok"))], tracer_provider=provider
            ) as back,
            serve_in_process(
                [gateway_service(ForwardingGateway(back.address, provider))],
                tracer_provider=provider,
            ) as front,
        ):
            with open_channel(front.address, tracer_provider=provider) as channel:
                reply = gw_grpc.GatewayServiceStub(channel).GetStatus(
                    gw_pb.GetStatusRequest(), timeout=5
                )
            assert reply.version == "front+ok"
            spans = otlp_receiver.wait_for(
                lambda got: len([s for s in got if s.name == METHOD]) >= 4, timeout=10
            )
    finally:
        provider.shutdown()
    chain = [s for s in spans if s.name == METHOD]
    assert len({s.trace_id for s in chain}) == 1, "every hop belongs to one trace"
    by_id = {s.span_id: s for s in chain}
    roots = [s for s in chain if not s.parent_span_id]
    assert len(roots) == 1, "only the outermost client span has no parent"
    # Walk down: client -> front server -> front's client -> back server.
    kinds = []
    span = roots[0]
    while True:
        kinds.append(span.kind)
        children = [s for s in chain if s.parent_span_id == span.span_id]
        if not children:
            break
        assert len(children) == 1
        span = children[0]
    assert kinds == ["CLIENT", "SERVER", "CLIENT", "SERVER"]
    assert all(s.parent_span_id in by_id for s in chain if s.parent_span_id)
    assert {s.service_name for s in chain} == {"longshore-demo"}
