"""Small servicers over the real v1 contracts, used to exercise the runtime."""

from __future__ import annotations

from grpc import aio
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from longshore.kanban.v1 import kanban_service_pb2_grpc

from services.runtime import errors
from services.runtime.aio_serving import AioService
from services.runtime.channels import open_aio_channel

Context = aio.ServicerContext[gw_pb.GetStatusRequest, gw_pb.GetStatusResponse]


class FailingGateway(gw_grpc.GatewayServiceServicer):
    """GetStatus behaves according to the deployment name it is built with."""

    def __init__(self, mode: str, downstream: str = "") -> None:
        self.mode = mode
        self.downstream = downstream

    async def GetStatus(  # type: ignore[override]
        self, request: gw_pb.GetStatusRequest, context: Context
    ) -> gw_pb.GetStatusResponse:
        if self.mode == "not_found":
            raise errors.NotFound("backend 'kanban' not found")
        if self.mode == "invalid":
            raise errors.InvalidArgument("scopes[0]: unknown scope 'root'")
        if self.mode == "crash":
            raise KeyError("surprise")
        if self.mode == "forward":
            # Calls a downstream server: its status must reach our caller unchanged.
            async with open_aio_channel(self.downstream) as channel:
                reply = await gw_grpc.GatewayServiceStub(channel).GetStatus(request, timeout=5)
            return gw_pb.GetStatusResponse(version="front+" + reply.version)
        return gw_pb.GetStatusResponse(version="ok", deployment=self.mode)


def gateway_service(servicer: gw_grpc.GatewayServiceServicer) -> AioService:
    return AioService(
        "longshore.gateway.v1.GatewayService",
        lambda s: gw_grpc.add_GatewayServiceServicer_to_server(servicer, s),
    )


def kanban_service(servicer: kanban_service_pb2_grpc.KanbanServiceServicer) -> AioService:
    return AioService(
        "longshore.kanban.v1.KanbanService",
        lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(servicer, s),
    )
