"""envd's ``process.Process`` Connect service over the gateway's Exec.

``Start`` runs the command with Exec and streams its output as envd does: a
start event, data events (stdout, stderr) as they come, keepalives while the
command is quiet, then an end event with the exit code. The SDK's command
timeout (the stream's Connect deadline) becomes Exec's timeout, which kills
the whole process tree inside the sandbox; a timed-out command ends the
stream with DEADLINE_EXCEEDED, which the SDK raises as its TimeoutException.

The calls on a running process (Connect, List, SendInput, StreamInput,
SendSignal, CloseStdin, Update) answer UNIMPLEMENTED: they need the process
RPCs (StartProcess, ConnectProcess, ...), which the manager does not serve
yet. Background commands (``background=True``) therefore run to completion
in the foreground stream and cannot be attached to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_pb as pp
from e2b.envd.process.process_connect import Process
from google.protobuf import duration_pb2
from longshore.sandbox.v1 import sandbox_pb2
from longshore.sandbox.v1 import sandbox_service_pb2 as spb
from protobuf import Oneof

from services.e2b.envd import target_of
from services.e2b.errors import problem_of
from services.e2b.gateway import Gateway
from services.e2b.sandboxes import Sandboxes

#: envd's header asking for keepalive events every N seconds while quiet.
KEEPALIVE_HEADER = "keepalive-ping-interval"
DEFAULT_KEEPALIVE_SECONDS = 50.0
MAX_ARGS = 256
MAX_ENVS = 128
#: Longest command (Exec timeout) when the client sets no deadline.
DEFAULT_TIMEOUT_SECONDS = 3600
_pids = itertools.count(1)


def _unimplemented(call: str) -> ConnectError:
    return ConnectError(
        Code.UNIMPLEMENTED,
        f"process.Process/{call}: not supported by Longshore's E2B front door yet "
        "(needs the manager's process RPCs; see docs/e2b.md)",
    )


def exec_request(sandbox_id: str, request: pp.StartRequest, timeout_ms: float | None) -> Any:
    """The Exec request for envd's ``StartRequest``.

    Raises:
        ConnectError: INVALID_ARGUMENT for a missing command, too many args or
            envs, or a PTY (not supported).
    """
    config = request.process
    if config is None or not config.cmd:
        raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd: required")
    if request.pty is not None:
        raise _unimplemented("Start with a PTY")
    if len(config.args) > MAX_ARGS or len(config.envs or {}) > MAX_ENVS:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"process: at most {MAX_ARGS} args and {MAX_ENVS} envs"
        )
    seconds = DEFAULT_TIMEOUT_SECONDS if not timeout_ms else max(1, int(timeout_ms // 1000))
    return spb.ExecRequest(
        sandbox_id=sandbox_id,
        argv=[config.cmd, *config.args],
        env=dict(config.envs or {}),
        workdir=config.cwd or "",
        timeout=duration_pb2.Duration(seconds=seconds),
    )


def _event(event: Any) -> pp.StartResponse:
    return pp.StartResponse(event=pp.ProcessEvent(event=event))


def _data(chunk: Any) -> pp.StartResponse:
    # Oneof infers `str` for a literal field name; the generated type wants
    # the Literal, so the value is passed untyped.
    name = "stderr" if chunk.stream == sandbox_pb2.OUTPUT_STREAM_STDERR else "stdout"
    output: Any = Oneof(name, chunk.data)
    return _event(Oneof("data", pp.ProcessEvent.DataEvent(output=output)))


def _end(exit_: Any) -> pp.StartResponse:
    code = int(exit_.exit_code)
    status = f"signal: {exit_.signal}" if exit_.signal else f"exit status {code}"
    return _event(
        Oneof(
            "end",
            pp.ProcessEvent.EndEvent(exit_code=code, exited=not exit_.signal, status=status),
        )
    )


class ProcessService(Process):
    """envd's Process service (the ``Process`` protocol of the SDK's generated code)."""

    def __init__(self, gateway: Gateway, sandboxes: Sandboxes) -> None:
        self._gw = gateway
        self._sandboxes = sandboxes

    async def start(
        self, request: pp.StartRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pp.StartResponse]:
        """Runs the command; streams start, output, keepalives and end."""
        headers = ctx.request_headers
        try:
            target = await target_of(self._sandboxes, headers)
        except Exception as exc:
            problem = problem_of(exc)
            raise (problem.connect_error() if problem else exc) from None
        call = self._gw.sandbox.Exec(
            exec_request(target.sandbox_id, request, ctx.timeout_ms),
            metadata=target.caller.metadata(),
            timeout=None,
        )
        try:
            interval = float(headers.get(KEEPALIVE_HEADER, "") or DEFAULT_KEEPALIVE_SECONDS)
        except ValueError:
            interval = DEFAULT_KEEPALIVE_SECONDS
        yield _event(Oneof("start", pp.ProcessEvent.StartEvent(pid=next(_pids))))
        async for item in self._with_keepalive(call, max(1.0, interval)):
            yield item

    async def _with_keepalive(self, call: Any, interval: float) -> AsyncIterator[pp.StartResponse]:
        stream = call.__aiter__()
        pending: asyncio.Task[Any] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(stream.__anext__())
                done, _ = await asyncio.wait({pending}, timeout=interval)
                if not done:
                    yield _event(Oneof("keepalive", pp.ProcessEvent.KeepAlive()))
                    continue
                try:
                    message = pending.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:
                    problem = problem_of(exc)
                    raise (problem.connect_error() if problem else exc) from None
                finally:
                    pending = None
                if message.HasField("output"):
                    yield _data(message.output)
                elif message.HasField("exit"):
                    if message.exit.timed_out:
                        raise ConnectError(
                            Code.DEADLINE_EXCEEDED, "command timed out (killed in the sandbox)"
                        )
                    yield _end(message.exit)
        finally:
            # The client went away (or the stream ended): stop the Exec, which
            # ends the command in the sandbox.
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            call.cancel()

    async def connect(
        self, request: pp.ConnectRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[pp.ConnectResponse]:
        """Not yet: needs ConnectProcess."""
        raise _unimplemented("Connect")
        yield  # pragma: no cover - makes this an async generator

    async def list(self, request: pp.ListRequest, ctx: RequestContext[Any, Any]) -> pp.ListResponse:
        """Not yet: needs ListProcesses."""
        raise _unimplemented("List")

    async def update(
        self, request: pp.UpdateRequest, ctx: RequestContext[Any, Any]
    ) -> pp.UpdateResponse:
        """PTY resize: not supported."""
        raise _unimplemented("Update")

    async def stream_input(
        self, request: AsyncIterator[pp.StreamInputRequest], ctx: RequestContext[Any, Any]
    ) -> pp.StreamInputResponse:
        """Not yet: needs SendProcessInput."""
        raise _unimplemented("StreamInput")

    async def send_input(
        self, request: pp.SendInputRequest, ctx: RequestContext[Any, Any]
    ) -> pp.SendInputResponse:
        """Not yet: needs SendProcessInput."""
        raise _unimplemented("SendInput")

    async def send_signal(
        self, request: pp.SendSignalRequest, ctx: RequestContext[Any, Any]
    ) -> pp.SendSignalResponse:
        """Not yet: needs SignalProcess."""
        raise _unimplemented("SendSignal")

    async def close_stdin(
        self, request: pp.CloseStdinRequest, ctx: RequestContext[Any, Any]
    ) -> pp.CloseStdinResponse:
        """Not yet: needs SendProcessInput."""
        raise _unimplemented("CloseStdin")
