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
import contextlib
from collections.abc import AsyncIterator, Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import aio
from longshore.sandbox.v1 import process_pb2, sandbox_service_pb2

from services.runtime.errors import FailedPrecondition, InvalidArgument, OutOfRange
from services.runtime.interceptors import Malformed
from services.runtime.sandbox_tokens import SandboxGrant
from services.sandbox.access import SandboxAccess
from services.sandbox.manager import SandboxManager
from services.sandbox.processes import ManagedProcess, ProcessConfig, checks
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
    # The servicer's pool for kills that must not queue behind readers.
    _cancels: futures.ThreadPoolExecutor

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def _process_sandbox(self, sandbox_id: str, context: Context) -> str:
        """The full id of the sandbox a process call acts on, after Exec's access check."""
        grant = self.access.grant(context)
        return await self._blocking(self._sandbox_for, grant, sandbox_id)

    def _sandbox_for(self, grant: SandboxGrant | None, sandbox_id: str, user: str = "") -> str:
        """In the pool: the sandbox's full id, if the grant covers it (and the user)."""
        if grant is None:
            return self.manager.resolve_id(sandbox_id)
        # Checked on what the container is (inspected once a run's first call),
        # then used by its full id (which also resumes a paused sandbox, as
        # for an operator).
        info = self.manager.identities.of(sandbox_id)
        self.access.check_sandbox(grant, info, exec_user=user)
        return self.manager.resolve_id(info.sandbox_id)

    async def _start(
        self, sandbox_id: str, config: ProcessConfig, context: Context, *, default_timeout: float
    ) -> ManagedProcess:
        """Access, then the start, in one pool step (a hop less on every start)."""
        grant = self.access.grant(context)

        def start() -> ManagedProcess:
            cid = self._sandbox_for(grant, sandbox_id, config.user)
            return self.manager.processes.start(cid, config, default_timeout=default_timeout)

        return await self._blocking(start)

    async def _find(
        self, sandbox_id: str, selector: process_pb2.ProcessSelector, context: Context
    ) -> ManagedProcess:
        chosen = checks.selector(selector)
        cid = await self._process_sandbox(sandbox_id, context)
        return self.manager.processes.find(cid, chosen)

    async def RunProcess(
        self,
        request_iterator: AsyncIterator[process_pb2.RunProcessRequest],
        context: Context,
    ) -> AsyncIterator[process_pb2.RunProcessResponse]:
        """See the proto."""
        first = await anext(aiter(request_iterator), None)
        if isinstance(first, Malformed):
            raise InvalidArgument(first.message)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument("start: the first message must start the process")
        config = checks.config_from_proto(first.start.config, "start.config")
        process = await self._start(
            first.start.sandbox_id,
            config,
            context,
            default_timeout=self.manager.section.exec_timeout_seconds,
        )

        def abandon() -> None:
            # Fire and forget on the kill pool: a no-op once the process ended
            # (and after the servicer closed, when the manager kills it).
            with contextlib.suppress(RuntimeError):
                self._cancels.submit(process.kill, "the caller of RunProcess went away")

        # A call can end while the server writes a message, where only the
        # done callback sees it (as for Exec).
        context.add_done_callback(lambda _context: abandon())  # type: ignore[arg-type]
        inputs: asyncio.Task[None] | None = asyncio.ensure_future(
            self._run_inputs(process, request_iterator)
        )
        events = aiter(process_events(process, 0))
        step: asyncio.Future[process_pb2.ProcessEvent | None] | None = None
        try:
            while True:
                step = asyncio.ensure_future(anext(events, None))
                if inputs is not None:
                    await asyncio.wait({step, inputs}, return_when=asyncio.FIRST_COMPLETED)
                    if inputs.done():
                        failed = inputs.exception()
                        if failed is not None:
                            raise failed
                        inputs = None  # the caller half-closed: output goes on
                event = await step
                if event is None:
                    return
                yield process_pb2.RunProcessResponse(event=event)
        finally:
            for task in (inputs, step):
                if task is not None:
                    task.cancel()
            abandon()

    async def _run_inputs(
        self,
        process: ManagedProcess,
        messages: AsyncIterator[process_pb2.RunProcessRequest],
    ) -> None:
        """Applies a RunProcess caller's messages in order, until it half-closes."""
        async for message in messages:
            if isinstance(message, Malformed):
                raise InvalidArgument(message.message)
            try:
                await self._apply_input(process, message)
            except FailedPrecondition:
                if process.running:
                    raise
                return  # input racing the exit changes nothing

    async def _apply_input(
        self, process: ManagedProcess, message: process_pb2.RunProcessRequest
    ) -> None:
        """One RunProcess message after the start: stdin, close-stdin, a signal or a resize."""
        kind = message.WhichOneof("message")
        if kind == "stdin":
            data = checks.input_data(message.stdin, "stdin")
            await asyncio.wrap_future(process.write(data))
        elif kind == "close_stdin":
            await asyncio.wrap_future(process.close_stdin())
        elif kind == "signal":
            signum = checks.signal_number(message.signal)
            await self._blocking(process.signal, signum, by="RunProcess")
        elif kind == "resize":
            await self._blocking(process.resize, checks.pty_size(message.resize, "resize"))
        elif kind == "start":
            raise InvalidArgument("start: only in the first message")
        else:
            raise InvalidArgument("message: must carry stdin, close_stdin, signal or resize")

    async def StartProcess(
        self, request: process_pb2.StartProcessRequest, context: Context
    ) -> process_pb2.StartProcessResponse:
        """See the proto."""
        config = checks.config_from_proto(request.config)
        process = await self._start(request.sandbox_id, config, context, default_timeout=0.0)
        return process_pb2.StartProcessResponse(process=record_to_proto(process.snapshot()))

    async def ConnectProcess(
        self, request: process_pb2.ConnectProcessRequest, context: Context
    ) -> AsyncIterator[process_pb2.ConnectProcessResponse]:
        """See the proto."""
        if request.HasField("start"):
            if request.HasField("process") or request.from_offset:
                raise InvalidArgument(
                    "process, from_offset: must be unset when start is set "
                    "(the started process is followed from its first byte)"
                )
            config = checks.config_from_proto(request.start, field="start")
            process = await self._start(request.sandbox_id, config, context, default_timeout=0.0)
            offset = 0
        else:
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

    A running process's stream may start past its output so far: it waits
    until the output gets there.

    Raises:
        OutOfRange: The process exited and ``from_offset`` is past its output.
    """
    produced = process.buffer.end
    if from_offset > produced and not process.running:
        raise OutOfRange(
            f"from_offset: {from_offset} is past the {produced} bytes process "
            f"{process.process_id} wrote before it exited"
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
