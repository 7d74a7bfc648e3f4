"""envd's ``process.Process`` Connect service over the gateway's process RPCs.

``Start`` is one ConnectProcess that starts the process (its ``start``
field): a start event with the pid, data events (stdout, stderr, or pty) as
they come, keepalives while the process is quiet, then an end event with the
exit code. The SDK's command timeout (the stream's Connect deadline) becomes
the process's timeout, so the manager kills the whole tree inside the
sandbox; a timed-out process ends the stream with DEADLINE_EXCEEDED, which
the SDK raises as its TimeoutException. A client that goes away leaves the
process running (as envd does): ``Connect`` by pid or tag attaches again,
from the start of its retained output. ``SendInput``, ``StreamInput``, ``CloseStdin``,
``SendSignal``, ``List`` and ``Update`` (PTY resize) map one to one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_pb as pp
from e2b.envd.process.process_connect import Process
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import process_pb2 as lp
from longshore.sandbox.v1 import sandbox_pb2
from protobuf import Oneof

from services.e2b.envd import Target, target_of
from services.e2b.errors import connect_error_of
from services.e2b.gateway import Gateway
from services.e2b.sandboxes import Sandboxes

#: envd's header asking for keepalive events every N seconds while quiet.
KEEPALIVE_HEADER = "keepalive-ping-interval"
DEFAULT_KEEPALIVE_SECONDS = 50.0
MAX_ARGS = 256
MAX_ENVS = 128
MAX_INPUT_BYTES = 1024 * 1024


def _mapped(exc: BaseException) -> BaseException:
    """The Connect error for a failure (see :func:`~services.e2b.errors.connect_error_of`)."""
    return connect_error_of(exc)


def process_config(request: pp.StartRequest, timeout_ms: float | None) -> lp.ProcessConfig:
    """Longshore's ProcessConfig for envd's ``StartRequest``.

    Raises:
        ConnectError: INVALID_ARGUMENT for a missing command, too many args or envs.
    """
    config = request.process
    if config is None or not config.cmd:
        raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd: required")
    if len(config.args) > MAX_ARGS or len(config.envs or {}) > MAX_ENVS:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"process: at most {MAX_ARGS} args and {MAX_ENVS} envs"
        )
    out = lp.ProcessConfig(
        argv=[config.cmd, *config.args],
        env=dict(config.envs or {}),
        workdir=config.cwd or "",
        tag=request.tag or "",
        stdin=bool(request.stdin),
    )
    if timeout_ms:
        out.timeout.CopyFrom(duration_pb2.Duration(seconds=max(1, int(timeout_ms // 1000))))
    size = request.pty.size if request.pty is not None else None
    if size is not None:
        out.pty.CopyFrom(lp.PtySize(rows=size.rows, columns=size.cols))
    return out


def selector(chosen: pp.ProcessSelector | None) -> lp.ProcessSelector:
    """Longshore's selector for envd's (a pid or a tag).

    Raises:
        ConnectError: INVALID_ARGUMENT when neither is set.
    """
    match chosen.selector if chosen is not None else None:
        case Oneof(field="pid", value=pid):
            return lp.ProcessSelector(pid=int(pid))
        case Oneof(field="tag", value=tag):
            return lp.ProcessSelector(tag=str(tag))
    raise ConnectError(Code.INVALID_ARGUMENT, "process: a pid or a tag is required")


def _event(event: Any) -> pp.ProcessEvent:
    return pp.ProcessEvent(event=event)


def _data(chunk: sandbox_pb2.OutputChunk) -> pp.ProcessEvent:
    # Oneof infers `str` for a field name; the generated type wants the
    # Literal, so the value is passed untyped.
    names = {sandbox_pb2.OUTPUT_STREAM_STDERR: "stderr", sandbox_pb2.OUTPUT_STREAM_PTY: "pty"}
    output: Any = Oneof(names.get(chunk.stream, "stdout"), chunk.data)
    return _event(Oneof("data", pp.ProcessEvent.DataEvent(output=output)))


def _end(exit_: lp.ProcessExit) -> pp.ProcessEvent:
    code = int(exit_.exit_code)
    status = f"signal: {exit_.signal}" if exit_.signal else f"exit status {code}"
    end = pp.ProcessEvent.EndEvent(exit_code=code, exited=not exit_.signal, status=status)
    if exit_.reason:
        end.error = exit_.reason
    return _event(Oneof("end", end))


class ProcessService(Process):
    """envd's Process service (the ``Process`` protocol of the SDK's generated code)."""

    def __init__(self, gateway: Gateway, sandboxes: Sandboxes) -> None:
        self._gw = gateway
        self._sandboxes = sandboxes

    async def _target(self, ctx: RequestContext[Any, Any]) -> Target:
        try:
            return await target_of(self._sandboxes, ctx.request_headers)
        except Exception as exc:
            raise _mapped(exc) from None

    async def start(
        self, request: pp.StartRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pp.StartResponse]:
        """ConnectProcess with ``start``: the process starts and its events follow, one call."""
        target = await self._target(ctx)
        config = process_config(request, ctx.timeout_ms)
        follow = lp.ConnectProcessRequest(sandbox_id=target.sandbox_id, start=config)
        async for event in self._follow(target, follow, ctx):
            yield pp.StartResponse(event=event)

    async def connect(
        self, request: pp.ConnectRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pp.ConnectResponse]:
        """ConnectProcess by pid or tag, from the start of the retained output."""
        target = await self._target(ctx)
        follow = lp.ConnectProcessRequest(
            sandbox_id=target.sandbox_id, process=selector(request.process)
        )
        async for event in self._follow(target, follow, ctx):
            yield pp.ConnectResponse(event=event)

    async def _follow(
        self, target: Target, follow: lp.ConnectProcessRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pp.ProcessEvent]:
        call = self._gw.sandbox.ConnectProcess(
            follow, metadata=target.caller.metadata(), timeout=None
        )
        try:
            interval = float(
                ctx.request_headers.get(KEEPALIVE_HEADER, "") or DEFAULT_KEEPALIVE_SECONDS
            )
        except ValueError:
            interval = DEFAULT_KEEPALIVE_SECONDS
        async for message in _with_keepalive(call, max(1.0, interval)):
            if message is None:
                yield _event(Oneof("keepalive", pp.ProcessEvent.KeepAlive()))
                continue
            event = message.event
            if event.HasField("started"):
                yield _event(Oneof("start", pp.ProcessEvent.StartEvent(pid=event.started.pid)))
            elif event.HasField("output"):
                yield _data(event.output.chunk)
            elif event.HasField("exit"):
                if event.exit.timed_out:
                    raise ConnectError(
                        Code.DEADLINE_EXCEEDED, "command timed out (killed in the sandbox)"
                    )
                yield _end(event.exit)

    async def list(self, request: pp.ListRequest, ctx: RequestContext[Any, Any]) -> pp.ListResponse:
        """ListProcesses (running ones, as envd)."""
        target = await self._target(ctx)
        try:
            found = await self._gw.sandbox.ListProcesses(
                lp.ListProcessesRequest(sandbox_id=target.sandbox_id),
                metadata=target.caller.metadata(),
            )
        except Exception as exc:
            raise _mapped(exc) from None
        return pp.ListResponse(
            processes=[
                pp.ProcessInfo(
                    config=pp.ProcessConfig(cmd=p.argv[0] if p.argv else "", args=list(p.argv[1:])),
                    pid=p.pid,
                    tag=p.tag or None,
                )
                for p in found.processes
            ]
        )

    async def _input(
        self, ctx: RequestContext[Any, Any], chosen: lp.ProcessSelector, data: bytes, close: bool
    ) -> None:
        if len(data) > MAX_INPUT_BYTES:
            raise ConnectError(Code.INVALID_ARGUMENT, f"input: at most {MAX_INPUT_BYTES} bytes")
        target = await self._target(ctx)
        try:
            await self._gw.sandbox.SendProcessInput(
                lp.SendProcessInputRequest(
                    sandbox_id=target.sandbox_id, process=chosen, data=data, close_stdin=close
                ),
                metadata=target.caller.metadata(),
            )
        except Exception as exc:
            raise _mapped(exc) from None

    async def send_input(
        self, request: pp.SendInputRequest, ctx: RequestContext[Any, Any]
    ) -> pp.SendInputResponse:
        """SendProcessInput (stdin or pty bytes)."""
        await self._input(ctx, selector(request.process), _input_bytes(request.input), False)
        return pp.SendInputResponse()

    async def stream_input(
        self, request: AsyncIterator[pp.StreamInputRequest], ctx: RequestContext[Any, Any]
    ) -> pp.StreamInputResponse:
        """SendProcessInput per data message, in order."""
        chosen: lp.ProcessSelector | None = None
        async for message in request:
            event = message.event.value if message.event is not None else None
            if isinstance(event, pp.StreamInputRequest.StartEvent):
                chosen = selector(event.process)
            elif isinstance(event, pp.StreamInputRequest.DataEvent):
                if chosen is None:
                    raise ConnectError(Code.INVALID_ARGUMENT, "start: must come first")
                await self._input(ctx, chosen, _input_bytes(event.input), False)
        return pp.StreamInputResponse()

    async def close_stdin(
        self, request: pp.CloseStdinRequest, ctx: RequestContext[Any, Any]
    ) -> pp.CloseStdinResponse:
        """SendProcessInput with close_stdin."""
        await self._input(ctx, selector(request.process), b"", True)
        return pp.CloseStdinResponse()

    async def send_signal(
        self, request: pp.SendSignalRequest, ctx: RequestContext[Any, Any]
    ) -> pp.SendSignalResponse:
        """SignalProcess (SIGTERM or SIGKILL, to the process's group)."""
        signum = int(request.signal.value) if request.signal is not None else 0
        if signum not in (9, 15):
            raise ConnectError(Code.INVALID_ARGUMENT, "signal: SIGTERM or SIGKILL")
        target = await self._target(ctx)
        try:
            await self._gw.sandbox.SignalProcess(
                lp.SignalProcessRequest(
                    sandbox_id=target.sandbox_id, process=selector(request.process), signal=signum
                ),
                metadata=target.caller.metadata(),
            )
        except Exception as exc:
            raise _mapped(exc) from None
        return pp.SendSignalResponse()

    async def update(
        self, request: pp.UpdateRequest, ctx: RequestContext[Any, Any]
    ) -> pp.UpdateResponse:
        """ResizeProcess (a PTY's size)."""
        size = request.pty.size if request.pty is not None else None
        if size is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "pty.size: required")
        target = await self._target(ctx)
        try:
            await self._gw.sandbox.ResizeProcess(
                lp.ResizeProcessRequest(
                    sandbox_id=target.sandbox_id,
                    process=selector(request.process),
                    size=lp.PtySize(rows=size.rows, columns=size.cols),
                ),
                metadata=target.caller.metadata(),
            )
        except Exception as exc:
            raise _mapped(exc) from None
        return pp.UpdateResponse()


def _input_bytes(value: pp.ProcessInput | None) -> bytes:
    match value.input if value is not None else None:
        case Oneof(field="stdin", value=data) | Oneof(field="pty", value=data):
            return bytes(data)
    return b""


async def _with_keepalive(call: Any, interval: float) -> AsyncIterator[Any]:
    """The call's messages, and None after each ``interval`` seconds without one."""
    stream = call.__aiter__()
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(stream.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=interval)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                message = finished.result()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise _mapped(exc) from None
            yield message
    finally:
        # The client went away or the stream ended: stop following (the
        # process itself runs on, as under envd).
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        call.cancel()
