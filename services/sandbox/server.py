"""gRPC handlers of ``longshore.sandbox.v1.SandboxService``: protos in, domain calls, protos out.

Rules live in :mod:`.manager` and :mod:`.reaper`; errors are typed service
errors mapped to status codes by the runtime's interceptor.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from longshore.sandbox.v1 import sandbox_service_pb2, sandbox_service_pb2_grpc

from services.runtime.errors import InvalidArgument, Unavailable
from services.runtime.serving import GrpcService
from services.sandbox import convert
from services.sandbox.manager import SandboxManager
from services.sandbox.reaper import Reaper

SERVICE_NAME = "longshore.sandbox.v1.SandboxService"


class SandboxServicer(sandbox_service_pb2_grpc.SandboxServiceServicer):
    """Implements the SandboxService contract over a :class:`SandboxManager`."""

    def __init__(self, manager: SandboxManager, reaper: Reaper) -> None:
        self.manager = manager
        self.reaper = reaper

    def AcquireSandbox(
        self, request: sandbox_service_pb2.AcquireSandboxRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        """See the proto."""
        persist = (
            request.persist_across_processes
            if request.HasField("persist_across_processes")
            else True
        )
        result = self.manager.acquire(
            request.task_id,
            request.profile,
            convert.spec_from_proto(request.spec),
            persist=persist,
        )
        return convert.acquire_to_proto(result)

    def GetSandbox(
        self, request: sandbox_service_pb2.GetSandboxRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.GetSandboxResponse:
        """See the proto."""
        info = self.manager.get(request.sandbox_id)
        return sandbox_service_pb2.GetSandboxResponse(sandbox=convert.sandbox_to_proto(info))

    def ListSandboxes(
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        """See the proto."""
        size = convert.page_size(request.page_size)
        cursor = convert.decode_page_token(request.page_token)
        states = convert.states_from_proto(list(request.states))
        infos = self.manager.list_sandboxes(
            profile=request.profile,
            task_id=request.task_id,
            states=states,
            extra_labels=dict(request.labels),
        )
        if cursor is not None:
            created, last_id = cursor
            infos = [i for i in infos if (i.created_ns, i.sandbox_id) < (created, last_id)]
        page = infos[:size]
        token = convert.encode_page_token(page[-1]) if len(infos) > size else ""
        return sandbox_service_pb2.ListSandboxesResponse(
            sandboxes=[convert.sandbox_to_proto(i) for i in page], next_page_token=token
        )

    def Exec(
        self, request: sandbox_service_pb2.ExecRequest, context: grpc.ServicerContext
    ) -> Iterator[sandbox_service_pb2.ExecResponse]:
        """See the proto."""
        if not request.sandbox_id:
            raise InvalidArgument("sandbox_id: required")
        command = convert.exec_from_proto(request)
        # The callback fires when the call ends for any reason; after a normal
        # exit it does nothing, after a cancel it kills the command's tree.
        events = self.manager.exec(request.sandbox_id, command, on_cancel=context.add_callback)
        try:
            for event in events:
                yield convert.exec_event_to_proto(event)
        finally:
            events.close()

    def ReleaseSandbox(
        self, request: sandbox_service_pb2.ReleaseSandboxRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.ReleaseSandboxResponse:
        """See the proto."""
        scheduled = self.manager.release(request.sandbox_id, force_remove=request.force_remove)
        return sandbox_service_pb2.ReleaseSandboxResponse(removal_scheduled=scheduled)

    def ReapOrphans(
        self, request: sandbox_service_pb2.ReapOrphansRequest, context: grpc.ServicerContext
    ) -> sandbox_service_pb2.ReapOrphansResponse:
        """See the proto."""
        max_age = None
        if request.HasField("max_age"):
            if request.max_age.seconds < 0 or request.max_age.nanos < 0:
                raise InvalidArgument("max_age: must not be negative")
            max_age = request.max_age.ToTimedelta()
        report = self.reaper.reap(max_age=max_age, profile=request.profile, dry_run=request.dry_run)
        if report.error:
            raise Unavailable(report.error)
        return convert.reap_to_proto(report)


def grpc_service(servicer: SandboxServicer) -> GrpcService:
    """The servicer as a :class:`GrpcService` for ``build_server``/``serve_in_process``."""
    return GrpcService(
        SERVICE_NAME,
        lambda server: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(
            servicer, server
        ),
    )
