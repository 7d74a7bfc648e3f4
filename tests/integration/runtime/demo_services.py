"""Small servicers over the real v1 contracts, used to exercise the runtime."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from longshore.gateway.v1 import gateway_service_pb2 as gw_pb
from longshore.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from longshore.kanban.v1 import event_pb2, kanban_service_pb2, kanban_service_pb2_grpc

from services.runtime import errors
from services.runtime.channels import open_channel
from services.runtime.serving import GrpcService


class FailingGateway(gw_grpc.GatewayServiceServicer):
    """GetStatus behaves according to the deployment name it is built with."""

    def __init__(self, mode: str, downstream: str = "") -> None:
        self.mode = mode
        self.downstream = downstream

    def GetStatus(
        self, request: gw_pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> gw_pb.GetStatusResponse:
        if self.mode == "not_found":
            raise errors.NotFound("backend 'kanban' not found")
        if self.mode == "invalid":
            raise errors.InvalidArgument("scopes[0]: unknown scope 'root'")
        if self.mode == "crash":
            raise KeyError("surprise")
        if self.mode == "forward":
            # Calls a downstream server: its status must reach our caller unchanged.
            with open_channel(self.downstream) as channel:
                reply = gw_grpc.GatewayServiceStub(channel).GetStatus(request, timeout=5)
            return gw_pb.GetStatusResponse(version="front+" + reply.version)
        return gw_pb.GetStatusResponse(version="ok", deployment=self.mode)


class StreamingKanban(kanban_service_pb2_grpc.KanbanServiceServicer):
    """WatchEvents yields one event, then fails with a typed error."""

    def WatchEvents(
        self, request: kanban_service_pb2.WatchEventsRequest, context: grpc.ServicerContext
    ) -> Iterator[kanban_service_pb2.WatchEventsResponse]:
        yield kanban_service_pb2.WatchEventsResponse(
            event=event_pb2.TaskEvent(event_id=1, kind="created")
        )
        raise errors.NotFound(f"board {request.board_id!r} not found")


def gateway_service(servicer: gw_grpc.GatewayServiceServicer) -> GrpcService:
    return GrpcService(
        "longshore.gateway.v1.GatewayService",
        lambda s: gw_grpc.add_GatewayServiceServicer_to_server(servicer, s),
    )


def kanban_service(servicer: kanban_service_pb2_grpc.KanbanServiceServicer) -> GrpcService:
    return GrpcService(
        "longshore.kanban.v1.KanbanService",
        lambda s: kanban_service_pb2_grpc.add_KanbanServiceServicer_to_server(servicer, s),
    )
