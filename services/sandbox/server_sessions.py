"""The four session RPCs of SandboxService: open, run a command, close, list.

A mixin of :class:`~services.sandbox.server.SandboxServicer`, like
:mod:`.server_files`: requests are validated first, then access is Exec's
(the sandbox token of the sandbox's task, or an operator), checked on the
inspected sandbox before any engine side effect; the :mod:`.sessions` calls
run in the servicer's blocking pool. A RunSessionCommand streams through a
:class:`_Relay`: the session's reader thread waits for room (at most
:data:`RELAY_AHEAD` chunks ahead of the caller), so a slow caller slows the
command instead of filling memory; a caller that goes away stops the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from longshore.sandbox.v1 import sandbox_pb2, session_pb2

from services.runtime.errors import FailedPrecondition, InvalidArgument, OutOfRange
from services.runtime.sandbox_tokens import SandboxGrant
from services.sandbox import convert
from services.sandbox.access import SandboxAccess, short_id
from services.sandbox.execution import MAX_OUTPUT_BYTES, MAX_TIMEOUT_SECONDS
from services.sandbox.manager import SandboxManager, check_ref
from services.sandbox.model import OutputChunk, StreamKind
from services.sandbox.policy import check_env
from services.sandbox.server_files import Context
from services.sandbox.sessions import (
    CommandRun,
    Session,
    SessionCommand,
    SessionExit,
    SessionInfo,
    SessionState,
)
from services.sandbox.sessions.framing import MARKER_VAR

T = TypeVar("T")
#: Longest session id a caller may pass (issued ids are 20 characters).
MAX_SESSION_ID_CHARS = 64
#: Longest shell path or workdir, in bytes.
MAX_PATH_BYTES = 4096
#: Largest command source, in bytes.
MAX_COMMAND_BYTES = 1024 * 1024
#: Output chunks a command's stream holds ahead of a slow caller.
RELAY_AHEAD = 8
#: How often a relay waiting for room checks that its caller is still there.
RELAY_POLL_SECONDS = 0.5

_STATES = {
    SessionState.READY: session_pb2.SESSION_STATE_READY,
    SessionState.BUSY: session_pb2.SESSION_STATE_BUSY,
    SessionState.DEAD: session_pb2.SESSION_STATE_DEAD,
    SessionState.CLOSED: session_pb2.SESSION_STATE_CLOSED,
}


class SessionRpcs:
    """Mixin for :class:`~services.sandbox.server.SandboxServicer`: the session RPCs."""

    manager: SandboxManager
    access: SandboxAccess

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

    async def _session_sandbox(self, sandbox_id: str, context: Context) -> str:
        """Full id of the sandbox a session call acts on, after Exec's access check."""
        check_ref("sandbox_id", sandbox_id)
        grant = self.access.grant(context)
        return await self._blocking(self._sandbox_of, sandbox_id, grant)

    def _sandbox_of(self, sandbox_id: str, grant: SandboxGrant | None) -> str:
        """In the pool: the sandbox's full id, checked against the grant (None: an operator)."""
        if grant is None:
            return self.manager.resolve_id(sandbox_id)
        info = self.manager.identities.of(sandbox_id)
        self.access.check_sandbox(grant, info)
        return self.manager.resolve_id(info.sandbox_id)

    def _start_command(
        self,
        sandbox_id: str,
        grant: SandboxGrant | None,
        session_id: str,
        command: SessionCommand,
        relay: _Relay,
    ) -> tuple[Session, CommandRun]:
        # One pool step for the check and the start: a command's latency is
        # a few milliseconds, and every hop through the pool is a good part.
        cid = self._sandbox_of(sandbox_id, grant)
        return self.manager.sessions.run(cid, session_id, command, relay)

    async def OpenSession(
        self, request: session_pb2.OpenSessionRequest, context: Context
    ) -> session_pb2.OpenSessionResponse:
        """See the proto."""
        check_ref("sandbox_id", request.sandbox_id)
        shell = _shell(request.shell)
        env = dict(request.env)
        check_env(env, "env")
        if MARKER_VAR in env:
            raise InvalidArgument(f"env: {MARKER_VAR} is reserved")
        workdir = _workdir(request.workdir)
        idle = 0.0
        if request.HasField("idle_timeout"):
            idle = convert.duration_seconds(
                request.idle_timeout, "idle_timeout", MAX_TIMEOUT_SECONDS
            )
        grant = self.access.grant(context)
        info = await self._blocking(self.manager.get, request.sandbox_id)
        self.access.check_sandbox(grant, info)
        if info.state not in ("running", "paused"):
            raise FailedPrecondition(
                f"sandbox {short_id(info.sandbox_id)} is not running ({info.state}); "
                "a session needs a running sandbox"
            )
        cid = await self._blocking(self.manager.resolve_id, info.sandbox_id)
        opened = await self._blocking(
            self.manager.sessions.open,
            cid,
            shell=shell,
            env=env,
            workdir=workdir,
            idle_timeout=idle or self.manager.section.session_idle_timeout_seconds,
        )
        return session_pb2.OpenSessionResponse(session=_session(opened))

    async def RunSessionCommand(
        self, request: session_pb2.RunSessionCommandRequest, context: Context
    ) -> AsyncIterator[session_pb2.RunSessionCommandResponse]:
        """See the proto."""
        _check_session_id(request.session_id)
        command = self._command(request)
        check_ref("sandbox_id", request.sandbox_id)
        grant = self.access.grant(context)
        relay = _Relay(asyncio.get_running_loop())
        session, run = await self._blocking(
            self._start_command, request.sandbox_id, grant, request.session_id, command, relay
        )

        def gone(_context: object) -> None:
            # The call ended: a normal end does nothing here; a cancel, a
            # deadline or a lost client stops the command (never the session).
            relay.close()
            session.stop(run, "cancel")

        # Two ways a call ends early, as in Exec: the coroutine is cancelled at
        # an await (the finally), or while a message is written (this callback).
        context.add_done_callback(gone)  # type: ignore[arg-type]
        try:
            while True:
                event = await relay.next()
                if isinstance(event, SessionExit):
                    yield session_pb2.RunSessionCommandResponse(exit=_exit(event))
                    return
                yield session_pb2.RunSessionCommandResponse(output=_chunk(event))
        finally:
            relay.close()
            if not run.done.is_set():
                session.stop(run, "cancel")

    def _command(self, request: session_pb2.RunSessionCommandRequest) -> SessionCommand:
        source = request.command
        if not source:
            raise InvalidArgument("command: required")
        if "\x00" in source:
            raise InvalidArgument("command: must not contain NUL")
        size = len(source.encode("utf-8", "surrogatepass"))
        if size > MAX_COMMAND_BYTES:
            raise InvalidArgument(f"command: {size} bytes, at most {MAX_COMMAND_BYTES}")
        timeout = 0.0
        if request.HasField("timeout"):
            timeout = convert.duration_seconds(request.timeout, "timeout", MAX_TIMEOUT_SECONDS)
        if request.max_output_bytes < 0:
            raise InvalidArgument("max_output_bytes: must not be negative")
        if request.max_output_bytes > MAX_OUTPUT_BYTES:
            raise OutOfRange(f"max_output_bytes: at most {MAX_OUTPUT_BYTES}")
        return SessionCommand(
            source=source,
            timeout_seconds=timeout or self.manager.section.exec_timeout_seconds,
            max_output_bytes=request.max_output_bytes,
        )

    async def CloseSession(
        self, request: session_pb2.CloseSessionRequest, context: Context
    ) -> session_pb2.CloseSessionResponse:
        """See the proto."""
        _check_session_id(request.session_id)
        cid = await self._session_sandbox(request.sandbox_id, context)
        closed = await self._blocking(self.manager.sessions.close, cid, request.session_id)
        return session_pb2.CloseSessionResponse(session=_session(closed))

    async def ListSessions(
        self, request: session_pb2.ListSessionsRequest, context: Context
    ) -> session_pb2.ListSessionsResponse:
        """See the proto."""
        cid = await self._session_sandbox(request.sandbox_id, context)
        rows = self.manager.sessions.list(cid)
        return session_pb2.ListSessionsResponse(sessions=[_session(i) for i in rows])


class _Relay:
    """A command's events from the session's reader thread to the handler, bounded.

    ``put`` (the reader thread) takes one of RELAY_AHEAD slots, waiting while
    the caller is slow; ``next`` (the loop) gives the slot back. The exit
    never waits: it is the last event and always delivered.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[OutputChunk | SessionExit] = asyncio.Queue()
        self._slots = threading.Semaphore(RELAY_AHEAD)
        self._closed = threading.Event()

    def put(self, event: OutputChunk, *, give_up: Callable[[], bool]) -> bool:
        """From the reader thread: passes output on, waiting for room until ``give_up()``.

        Returns False when the caller is gone, or it gave up without room.
        """
        while True:
            if self._closed.is_set():
                return False
            stopping = give_up()
            if self._slots.acquire(timeout=0 if stopping else RELAY_POLL_SECONDS):
                break
            if stopping:
                return False
        if self._closed.is_set():
            return False
        return self._deliver(event)

    def end(self, event: SessionExit) -> None:
        """From any thread: passes the exit on."""
        self._deliver(event)

    def _deliver(self, event: OutputChunk | SessionExit) -> bool:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server is shutting down
            return False
        return True

    async def next(self) -> OutputChunk | SessionExit:
        """The next event (the exit is the last)."""
        event = await self._queue.get()
        if isinstance(event, OutputChunk):
            self._slots.release()
        return event

    def close(self) -> None:
        """The caller is gone: a waiting ``put`` gives up."""
        self._closed.set()
        with contextlib.suppress(ValueError):
            self._slots.release()


def _check_session_id(session_id: str) -> None:
    if not session_id:
        raise InvalidArgument("session_id: required")
    if len(session_id) > MAX_SESSION_ID_CHARS:
        raise InvalidArgument(
            f"session_id: at most {MAX_SESSION_ID_CHARS} characters, got {len(session_id)}"
        )


def _shell(shell: str) -> str:
    if not shell:
        return "/bin/sh"
    _check_path_field("shell", shell)
    return shell


def _workdir(workdir: str) -> str:
    if workdir:
        _check_path_field("workdir", workdir)
    return workdir


def _check_path_field(field_name: str, path: str) -> None:
    if "\x00" in path:
        raise InvalidArgument(f"{field_name}: must not contain NUL")
    size = len(path.encode("utf-8", "surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(f"{field_name}: {size} bytes, at most {MAX_PATH_BYTES}")
    if not path.startswith("/"):
        raise InvalidArgument(f"{field_name}: must be an absolute path")


def _session(info: SessionInfo) -> session_pb2.Session:
    msg = session_pb2.Session(
        session_id=info.session_id,
        sandbox_id=info.sandbox_id,
        shell=info.shell,
        state=_STATES[info.state],
        commands_run=info.commands_run,
        end_reason=info.end_reason,
    )
    msg.create_time.FromDatetime(info.create_time)
    msg.last_used_time.FromDatetime(info.last_used_time)
    msg.idle_timeout.FromMilliseconds(int(info.idle_timeout_seconds * 1000))
    return msg


def _chunk(chunk: OutputChunk) -> sandbox_pb2.OutputChunk:
    stream = (
        sandbox_pb2.OUTPUT_STREAM_STDERR
        if chunk.stream is StreamKind.STDERR
        else sandbox_pb2.OUTPUT_STREAM_STDOUT
    )
    return sandbox_pb2.OutputChunk(stream=stream, data=chunk.data)


def _exit(event: SessionExit) -> session_pb2.SessionCommandExit:
    msg = session_pb2.SessionCommandExit(
        exit_code=event.exit_code,
        timed_out=event.timed_out,
        truncated=event.truncated,
        output_bytes=event.output_bytes,
        session_ended=event.session_ended,
    )
    msg.duration.FromNanoseconds(int(event.duration_seconds * 1e9))
    return msg
