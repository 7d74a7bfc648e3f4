"""The process RPCs of SandboxService: start, connect, list, input, signal, resize.

A mixin of :class:`~services.sandbox.server.SandboxServicer`, like
:mod:`.server_files`: the handlers check the request (:mod:`.processes.checks`),
then access exactly as Exec does (a non-admin caller needs the sandbox token
of the sandbox's task, and only an operator may name a user), then act
through the manager's :class:`~.processes.SandboxProcesses`. Engine calls run
in the servicer's blocking pool; a connected caller waits on the process's
output buffer as a coroutine, never holding a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import aio
from longshore.sandbox.v1 import process_pb2, sandbox_service_pb2

from services.runtime.errors import FailedPrecondition, OutOfRange
from services.sandbox.access import SandboxAccess
from services.sandbox.manager import SandboxManager
from services.sandbox.processes import ManagedProcess, checks
from services.sandbox.processes.records import (
    Skipped,
    end_to_proto,
    piece_to_proto,
    record_to_proto,
)

T = TypeVar("T")
Context = aio.ServicerContext[Any, Any]
pb = sandbox_service_pb2


class ProcessRpcs:
    """Mixin for :class:`~services.sandbox.server.SandboxServicer`: the process RPCs."""

    manager: SandboxManager
    access: SandboxAccess

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def _process_sandbox(self, sandbox_id: str, context: Context, *, user: str = "") -> str:
        """The full id of the sandbox a process call acts on, after Exec's access check."""
        grant = self.access.grant(context)
        if grant is None:
            return await self._blocking(self.manager.resolve_id, sandbox_id)
        # Checked on the inspected container, then used by its full id.
        info = await self._blocking(self.manager.get, sandbox_id)
        self.access.check_sandbox(grant, info, exec_user=user)
        return info.sandbox_id

    async def _find(
        self, sandbox_id: str, selector: process_pb2.ProcessSelector, context: Context
    ) -> ManagedProcess:
        chosen = checks.selector(selector)
        cid = await self._process_sandbox(sandbox_id, context)
        return self.manager.processes.find(cid, chosen)

    async def StartProcess(
        self, request: process_pb2.StartProcessRequest, context: Context
    ) -> process_pb2.StartProcessResponse:
        """See the proto."""
        config = checks.config_from_proto(request.config)
        cid = await self._process_sandbox(request.sandbox_id, context, user=config.user)
        process = await self._blocking(self.manager.processes.start, cid, config)
        return process_pb2.StartProcessResponse(process=record_to_proto(process.snapshot()))

    async def ConnectProcess(
        self, request: process_pb2.ConnectProcessRequest, context: Context
    ) -> AsyncIterator[process_pb2.ConnectProcessResponse]:
        """See the proto."""
        offset = checks.from_offset(request.from_offset)
        process = await self._find(request.sandbox_id, request.process, context)
        async for event in process_events(process, offset):
            yield process_pb2.ConnectProcessResponse(event=event)

    async def ListProcesses(
        self, request: process_pb2.ListProcessesRequest, context: Context
    ) -> process_pb2.ListProcessesResponse:
        """See the proto."""
        cid = await self._process_sandbox(request.sandbox_id, context)
        found = self.manager.processes.in_sandbox(cid, include_exited=request.include_exited)
        return process_pb2.ListProcessesResponse(
            processes=[record_to_proto(p.snapshot()) for p in found]
        )

    async def SendProcessInput(
        self, request: process_pb2.SendProcessInputRequest, context: Context
    ) -> process_pb2.SendProcessInputResponse:
        """See the proto."""
        data = checks.input_data(request.data, "data")
        process = await self._find(request.sandbox_id, request.process, context)
        if data or not request.close_stdin:
            # An empty write still refuses a closed stdin or an exited process.
            await asyncio.wrap_future(process.write(data))
        if request.close_stdin:
            await asyncio.wrap_future(process.close_stdin())
        self.manager.touch(process.sandbox_id)
        return process_pb2.SendProcessInputResponse()

    async def SignalProcess(
        self, request: process_pb2.SignalProcessRequest, context: Context
    ) -> process_pb2.SignalProcessResponse:
        """See the proto."""
        signum = checks.signal_number(request.signal)
        process = await self._find(request.sandbox_id, request.process, context)
        await self._blocking(process.signal, signum, by="SignalProcess")
        return process_pb2.SignalProcessResponse()

    async def ResizeProcess(
        self, request: process_pb2.ResizeProcessRequest, context: Context
    ) -> process_pb2.ResizeProcessResponse:
        """See the proto."""
        size = checks.pty_size(request.size, "size")
        process = await self._find(request.sandbox_id, request.process, context)
        await self._blocking(process.resize, size)
        return process_pb2.ResizeProcessResponse()


async def process_events(
    process: ManagedProcess, from_offset: int
) -> AsyncIterator[process_pb2.ProcessEvent]:
    """A process's stream: the process, output from ``from_offset`` on, then its exit.

    Raises:
        OutOfRange: ``from_offset`` is past the output produced so far.
    """
    produced = process.buffer.end
    if from_offset > produced:
        raise OutOfRange(
            f"from_offset: {from_offset} is past the {produced} bytes process "
            f"{process.process_id} has written"
        )
    yield process_pb2.ProcessEvent(started=record_to_proto(process.snapshot()))
    async for part in process.buffer.follow(from_offset):
        if isinstance(part, Skipped):
            yield process_pb2.ProcessEvent(skipped_to_offset=part.offset)
        else:
            yield piece_to_proto(part)
    end = process.snapshot().end
    if end is None:  # the buffer closes only after the end is set
        raise FailedPrecondition(f"process {process.process_id}: output ended before its exit")
    yield process_pb2.ProcessEvent(exit=end_to_proto(end))
