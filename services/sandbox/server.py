"""gRPC handlers of ``longshore.sandbox.v1.SandboxService`` on ``grpc.aio``: protos in,
domain calls, protos out.

Rules live in :mod:`.manager`, :mod:`.reaper`, :mod:`.policy` (what a spec may
ask for) and :mod:`.access` (who may use which sandbox, checked here before
any engine side effect); errors are typed service errors mapped to status
codes by the runtime's interceptor.

The handlers are coroutines; every Docker SDK call blocks, so it runs in one
bounded pool (``sandbox.max_workers`` threads), which therefore bounds the
engine calls in flight, Exec streams included (each holds a thread while it
waits for output). :mod:`.exec_stream` bridges an Exec's output to the stream
and kills the command of a caller that goes away. The file RPCs (:mod:`.files`)
run in the same pool: a WriteFiles pool thread pulls the caller's messages
(read a few ahead on the loop) into the engine's upload, and a ReadFile pool
thread reads the engine a few chunks ahead of the caller.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import AsyncIterator, Callable, Generator
from concurrent import futures
from typing import Any, TypeVar

from grpc import aio
from longshore.sandbox.v1 import (
    file_pb2,
    sandbox_pb2,
    sandbox_service_pb2,
    sandbox_service_pb2_grpc,
)

from services.runtime.aio_serving import AioService
from services.runtime.errors import Cancelled, InvalidArgument, ResourceExhausted, Unavailable
from services.runtime.interceptors import Malformed
from services.runtime.sandbox_tokens import SandboxGrant
from services.sandbox import convert, files, labels
from services.sandbox.access import SandboxAccess, short_id
from services.sandbox.exec_stream import ExecStream
from services.sandbox.files import FileStat, Target
from services.sandbox.hardening import resolve_spec
from services.sandbox.manager import SandboxManager
from services.sandbox.model import Spec
from services.sandbox.policy import check_image_allowed, quote
from services.sandbox.reaper import Reaper

SERVICE_NAME = "longshore.sandbox.v1.SandboxService"
#: Threads that kill the commands of abandoned Execs (apart from the engine pool).
CANCEL_WORKERS = 4
#: How often a WriteFiles pull waiting for the caller's next message checks the call ended.
PULL_POLL_SECONDS = 1.0

T = TypeVar("T")
Context = aio.ServicerContext[Any, Any]


class SandboxServicer(sandbox_service_pb2_grpc.SandboxServiceServicer):
    """Implements the SandboxService contract over a :class:`SandboxManager`.

    Args:
        manager: The manager of this deployment's sandboxes.
        reaper: The orphan reaper.
        internal_token: The internal credential sandbox tokens are signed
            under; empty: no token verifies, so only operators may acquire,
            exec and release.
        max_workers: Threads of the blocking pool; ``sandbox.max_workers``
            by default.
    """

    def __init__(
        self,
        manager: SandboxManager,
        reaper: Reaper,
        *,
        internal_token: str = "",
        max_workers: int | None = None,
    ) -> None:
        self.manager = manager
        self.reaper = reaper
        self.access = SandboxAccess(internal_token, manager.deployment)
        self._pool = futures.ThreadPoolExecutor(
            max_workers=max_workers or manager.section.max_workers,
            thread_name_prefix="sandbox-engine",
        )
        # A cancel is what unblocks a reader that holds a pool thread, so it
        # must never wait in the pool's queue behind such readers.
        self._cancels = futures.ThreadPoolExecutor(
            max_workers=CANCEL_WORKERS, thread_name_prefix="sandbox-cancel"
        )
        # The Execs in flight. Added and removed on the loop, read by close()
        # on the main thread after the loop stopped: hence the lock.
        self._streams_lock = threading.Lock()
        self._streams: set[ExecStream] = set()
        # File transfers in flight, for the same reason: their pool threads
        # wait on the caller and must be told to stop if no finally runs.
        self._transfers: set[_ReadAhead | _WriteParts] = set()

    def close(self) -> None:
        """After the server drained: kills the commands of Execs still open, ends the pools.

        The drain cancels the calls still open after its grace, but their
        handlers' ``finally`` may never run once the loop stops; abandoning
        them here makes sure no command outlives the manager's shutdown.
        """
        with self._streams_lock:
            open_streams = list(self._streams)
        for stream in open_streams:
            stream.abandon()
        with self._streams_lock:
            transfers = list(self._transfers)
        for transfer in transfers:
            transfer.stop()
        self._cancels.shutdown(wait=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs a blocking (engine) call in the pool; the loop serves other calls meanwhile."""
        loop = asyncio.get_running_loop()
        # run_in_executor does not carry context variables: copy them, so the
        # engine call's spans are children of this call's server span.
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._pool, call)

    async def AcquireSandbox(
        self, request: sandbox_service_pb2.AcquireSandboxRequest, context: Context
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        """See the proto."""
        # Who may ask comes first: a refused caller never reaches the engine.
        grant = self.access.grant(context)
        self.access.check_acquire(grant, request.task_id, request.profile, request.spec)
        return await self._blocking(self._acquire, request, grant)

    def _acquire(
        self, request: sandbox_service_pb2.AcquireSandboxRequest, grant: SandboxGrant | None
    ) -> sandbox_service_pb2.AcquireSandboxResponse:
        persist = (
            request.persist_across_processes
            if request.HasField("persist_across_processes")
            else True
        )
        if grant is not None and not persist:
            self._check_one_fresh_sandbox(request.task_id, request.profile)
        result = self.manager.acquire(
            request.task_id,
            request.profile,
            _spec(request.spec),
            persist=persist,
        )
        return convert.acquire_to_proto(result)

    def _check_one_fresh_sandbox(self, task_id: str, profile: str) -> None:
        """Refuses a run's holder a second non-persistent sandbox while one is alive.

        A persistent acquire is get-or-create by key, so a holder can never
        have more than one; without this, a worker key could create fresh
        sandboxes in a loop under one token. Operators are not limited.
        """
        alive = [
            info
            for info in self.manager.list_sandboxes(task_id=task_id, profile=profile)
            if info.labels.get(labels.PERSIST) == "false"
            and info.state in ("created", "running", "paused", "restarting")
        ]
        if alive:
            raise ResourceExhausted(
                f"task {quote(task_id)} already has a non-persistent sandbox "
                f"{short_id(alive[0].sandbox_id)}; release it before acquiring another"
            )

    async def GetSandbox(
        self, request: sandbox_service_pb2.GetSandboxRequest, context: Context
    ) -> sandbox_service_pb2.GetSandboxResponse:
        """See the proto."""
        info = await self._blocking(self.manager.get, request.sandbox_id)
        return sandbox_service_pb2.GetSandboxResponse(sandbox=convert.sandbox_to_proto(info))

    async def ListSandboxes(
        self, request: sandbox_service_pb2.ListSandboxesRequest, context: Context
    ) -> sandbox_service_pb2.ListSandboxesResponse:
        """See the proto."""
        size = convert.page_size(request.page_size)
        cursor = convert.decode_page_token(request.page_token)
        states = convert.states_from_proto(list(request.states))
        infos = await self._blocking(
            self.manager.list_sandboxes,
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

    async def Exec(
        self, request: sandbox_service_pb2.ExecRequest, context: Context
    ) -> AsyncIterator[sandbox_service_pb2.ExecResponse]:
        """See the proto."""
        if not request.sandbox_id:
            raise InvalidArgument("sandbox_id: required")
        command = convert.exec_from_proto(request)
        sandbox_id = request.sandbox_id
        grant = self.access.grant(context)
        if grant is not None:
            # Checked on the inspected container, then used by its full id, so
            # the command runs in exactly the sandbox whose labels were checked.
            info = await self._blocking(self.manager.get, sandbox_id)
            self.access.check_sandbox(grant, info, exec_user=request.user)
            sandbox_id = info.sandbox_id
        stream = ExecStream(
            functools.partial(self.manager.exec, sandbox_id, command), self._pool, self._cancels
        )
        # Two ways a call ends early, both covered: the coroutine is cancelled
        # at an await (the finally below), or while the server writes a chunk,
        # where only the call's done callback sees it. After a normal end the
        # abandon does nothing.
        # (The stubs type the callback as a class of their own; any callable works.)
        context.add_done_callback(lambda _context: stream.abandon())  # type: ignore[arg-type]
        with self._streams_lock:
            self._streams.add(stream)
        try:
            while (event := await stream.next()) is not None:
                yield convert.exec_event_to_proto(event)
        finally:
            stream.abandon()
            with self._streams_lock:
                self._streams.discard(stream)

    async def ReleaseSandbox(
        self, request: sandbox_service_pb2.ReleaseSandboxRequest, context: Context
    ) -> sandbox_service_pb2.ReleaseSandboxResponse:
        """See the proto."""
        sandbox_id = request.sandbox_id
        grant = self.access.grant(context)
        if grant is not None:
            info = await self._blocking(self.manager.get, sandbox_id)
            self.access.check_sandbox(grant, info)
            sandbox_id = info.sandbox_id
        scheduled = await self._blocking(
            self.manager.release, sandbox_id, force_remove=request.force_remove
        )
        return sandbox_service_pb2.ReleaseSandboxResponse(removal_scheduled=scheduled)

    async def ReapOrphans(
        self, request: sandbox_service_pb2.ReapOrphansRequest, context: Context
    ) -> sandbox_service_pb2.ReapOrphansResponse:
        """See the proto."""
        self.access.require_operator(context, "ReapOrphans")
        max_age = convert.max_age_from_proto(request)
        report = await self._blocking(
            self.reaper.reap, max_age=max_age, profile=request.profile, dry_run=request.dry_run
        )
        if report.error:
            raise Unavailable(report.error)
        return convert.reap_to_proto(report)

    async def CheckSandboxSpec(
        self, request: sandbox_service_pb2.CheckSandboxSpecRequest, context: Context
    ) -> sandbox_service_pb2.CheckSandboxSpecResponse:
        """See the proto."""
        self.access.require_operator(context, "CheckSandboxSpec")
        # The very code an acquire runs, minus the engine (so no pool thread).
        resolved = resolve_spec(_spec(request.spec), self.manager.section)
        check_image_allowed(request.spec.image, list(request.allowed_images), self.manager.section)
        return sandbox_service_pb2.CheckSandboxSpecResponse(config_hash=resolved.config_hash)

    # ---- files (see :mod:`.files`) -------------------------------------------------

    async def _file_target(self, sandbox_id: str, context: Context) -> tuple[Target, bool]:
        """The sandbox a file call acts on, after Exec's access check; and if an operator."""
        grant = self.access.grant(context)
        target = await self._blocking(self.manager.files.target, sandbox_id)
        self.access.check_sandbox(grant, target.info)
        return target, grant is None

    async def WriteFiles(
        self,
        request_iterator: AsyncIterator[sandbox_service_pb2.WriteFilesRequest],
        context: Context,
    ) -> sandbox_service_pb2.WriteFilesResponse:
        """See the proto."""
        first = await anext(aiter(request_iterator), None)
        if isinstance(first, Malformed):
            raise InvalidArgument(first.message)
        if first is None or first.WhichOneof("part") != "sandbox_id":
            raise InvalidArgument("sandbox_id: the first message must name the sandbox")
        target, operator = await self._file_target(first.sandbox_id, context)
        stream = _WriteParts(request_iterator, asyncio.get_running_loop())
        with self._streams_lock:
            self._transfers.add(stream)
        try:
            # The pool thread pulls the caller's messages itself (through the
            # loop), so each chunk goes straight into the engine's request:
            # backpressure end to end, and a 100 MB file is never held whole.
            written = await self._blocking(
                self.manager.files.write, target, stream.pull, operator=operator
            )
        finally:
            # A caller that went away must not leave the thread waiting for
            # its next message.
            stream.close()
            with self._streams_lock:
                self._transfers.discard(stream)
        return sandbox_service_pb2.WriteFilesResponse(
            files=[_entry(f) for f in written], bytes_written=sum(f.size for f in written)
        )

    async def ReadFile(
        self, request: sandbox_service_pb2.ReadFileRequest, context: Context
    ) -> AsyncIterator[sandbox_service_pb2.ReadFileResponse]:
        """See the proto."""
        target, operator = await self._file_target(request.sandbox_id, context)
        parts = self.manager.files.read(target, request.path, operator=operator)
        ahead = _ReadAhead(parts, asyncio.get_running_loop())
        # One pool thread reads the engine while the loop writes to the caller:
        # pulling a chunk per write instead serialised the two (3x slower).
        job = asyncio.ensure_future(self._blocking(ahead.run))
        with self._streams_lock:
            self._transfers.add(ahead)
        try:
            while (part := await ahead.next()) is not None:
                if isinstance(part, FileStat):
                    yield sandbox_service_pb2.ReadFileResponse(entry=_entry(part))
                else:
                    yield sandbox_service_pb2.ReadFileResponse(data=part)
        finally:
            ahead.stop()
            with self._streams_lock:
                self._transfers.discard(ahead)
            # The thread closes the engine's response itself; wait for it.
            await asyncio.shield(job)

    async def ListDirectory(
        self, request: sandbox_service_pb2.ListDirectoryRequest, context: Context
    ) -> sandbox_service_pb2.ListDirectoryResponse:
        """See the proto."""
        path = files.check_path("path", request.path)
        depth = files.depth_of(request.depth)
        size = files.page_size(request.page_size)
        offset = files.decode_page_token(request.page_token, path, depth)
        target, operator = await self._file_target(request.sandbox_id, context)
        entries, more = await self._blocking(
            self.manager.files.list_directory,
            target,
            path,
            depth=depth,
            offset=offset,
            limit=size,
            operator=operator,
        )
        token = files.encode_page_token(path, depth, offset + len(entries)) if more else ""
        return sandbox_service_pb2.ListDirectoryResponse(
            entries=[_entry(e) for e in entries], next_page_token=token
        )

    async def StatPath(
        self, request: sandbox_service_pb2.StatPathRequest, context: Context
    ) -> sandbox_service_pb2.StatPathResponse:
        """See the proto."""
        path = files.check_path("path", request.path)
        target, _ = await self._file_target(request.sandbox_id, context)
        self.manager.files.check_reachable(target, "path", path)
        entry = await self._blocking(self.manager.files.stat, target, path)
        return sandbox_service_pb2.StatPathResponse(entry=_entry(entry))

    async def MakeDirectory(
        self, request: sandbox_service_pb2.MakeDirectoryRequest, context: Context
    ) -> sandbox_service_pb2.MakeDirectoryResponse:
        """See the proto."""
        files.check_path("path", request.path)
        target, operator = await self._file_target(request.sandbox_id, context)
        entry, created = await self._blocking(
            self.manager.files.make_directory,
            target,
            request.path,
            mode=request.mode,
            uid=request.uid if request.HasField("uid") else None,
            gid=request.gid if request.HasField("gid") else None,
            make_parents=request.make_parents,
            operator=operator,
        )
        return sandbox_service_pb2.MakeDirectoryResponse(entry=_entry(entry), created=created)

    async def MovePath(
        self, request: sandbox_service_pb2.MovePathRequest, context: Context
    ) -> sandbox_service_pb2.MovePathResponse:
        """See the proto."""
        files.check_path("source_path", request.source_path)
        files.check_path("destination_path", request.destination_path)
        target, _ = await self._file_target(request.sandbox_id, context)
        entry = await self._blocking(
            self.manager.files.move,
            target,
            request.source_path,
            request.destination_path,
            overwrite=request.overwrite,
        )
        return sandbox_service_pb2.MovePathResponse(entry=_entry(entry))

    async def RemovePath(
        self, request: sandbox_service_pb2.RemovePathRequest, context: Context
    ) -> sandbox_service_pb2.RemovePathResponse:
        """See the proto."""
        files.check_path("path", request.path)
        target, _ = await self._file_target(request.sandbox_id, context)
        entry = await self._blocking(
            self.manager.files.remove, target, request.path, recursive=request.recursive
        )
        return sandbox_service_pb2.RemovePathResponse(entry=_entry(entry))


#: Chunks a ReadFile (or WriteFiles) buffers ahead of the slower side, at most.
READ_AHEAD = 4
_END = object()


class _ReadAhead:
    """Runs a file read in a pool thread, at most READ_AHEAD parts ahead of the caller.

    The generator is advanced and closed only by that thread (a generator may
    not be resumed from two threads), so stopping is a flag it checks.
    """

    def __init__(
        self, parts: Generator[FileStat | bytes, None, None], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._parts = parts
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._slots = threading.Semaphore(READ_AHEAD)
        self._stopped = threading.Event()

    def run(self) -> None:
        """In a pool thread: reads every part into the queue, or stops when told."""

        def put(item: object) -> None:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

        try:
            for part in self._parts:
                while not self._slots.acquire(timeout=PULL_POLL_SECONDS):
                    if self._stopped.is_set():
                        return
                if self._stopped.is_set():
                    return
                put(part)
            put(_END)
        except Exception as exc:  # typed errors included: the handler raises them
            put(exc)
        finally:
            self._parts.close()

    async def next(self) -> FileStat | bytes | None:
        """The next part (None at the end); re-raises what the read raised."""
        item = await self._queue.get()
        if item is _END:
            return None
        if isinstance(item, Exception):
            raise item
        self._slots.release()
        return item  # type: ignore[return-value]

    def stop(self) -> None:
        """Tells the thread to stop (a no-op after the end)."""
        self._stopped.set()
        self._slots.release()


class _WriteParts:
    """A WriteFiles request stream as the blocking writer pulls it, from a pool thread.

    A task on the loop reads up to READ_AHEAD messages ahead into a queue, so
    receiving from the caller overlaps sending to the engine (a pull per
    receive serialised them); the bounded queue keeps the backpressure.
    ``close`` (when the handler ends, the caller gone included) stops the
    task and a pull that would otherwise wait forever for a message.
    """

    def __init__(
        self,
        messages: AsyncIterator[sandbox_service_pb2.WriteFilesRequest],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._messages = messages
        self._loop = loop
        self.gone = threading.Event()
        self._queue: asyncio.Queue[files.Part | Exception | None] = asyncio.Queue(READ_AHEAD)
        self._reader = loop.create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            while (part := await self._next()) is not None:
                await self._queue.put(part)
            await self._queue.put(None)
        except Exception as exc:  # a typed refusal of a message: the writer raises it
            await self._queue.put(exc)

    def close(self) -> None:
        """On the loop, when the handler ends: stops reading and any waiting pull."""
        self.gone.set()
        self._reader.cancel()

    def stop(self) -> None:
        """From any thread (the servicer's shutdown): ends a pull waiting for a message."""
        self.gone.set()

    def pull(self) -> files.Part | None:
        """The next header or data (None at the end of the stream).

        Raises:
            InvalidArgument: A second sandbox_id, or an empty message.
            Cancelled: The call ended while waiting.
        """
        future = asyncio.run_coroutine_threadsafe(self._queue.get(), self._loop)
        while True:
            try:
                item = future.result(timeout=PULL_POLL_SECONDS)
            except futures.TimeoutError:
                if self.gone.is_set():
                    future.cancel()
                    raise Cancelled("WriteFiles: the call ended") from None
                continue
            if isinstance(item, Exception):
                raise item
            return item

    async def _next(self) -> files.Part | None:
        message = await anext(aiter(self._messages), None)
        if message is None:
            return None
        if isinstance(message, Malformed):
            raise InvalidArgument(message.message)
        kind = message.WhichOneof("part")
        if kind == "data":
            return message.data
        if kind == "header":
            h = message.header
            return files.FileHeader(
                path=h.path,
                size=h.size,
                mode=h.mode,
                uid=h.uid if h.HasField("uid") else None,
                gid=h.gid if h.HasField("gid") else None,
                make_parents=h.make_parents,
            )
        if kind == "sandbox_id":
            raise InvalidArgument("sandbox_id: only in the first message")
        raise InvalidArgument("part: a message must carry a header or data")


_FILE_TYPES = {
    files.FileKind.FILE: file_pb2.FILE_TYPE_FILE,
    files.FileKind.DIRECTORY: file_pb2.FILE_TYPE_DIRECTORY,
    files.FileKind.SYMLINK: file_pb2.FILE_TYPE_SYMLINK,
    files.FileKind.OTHER: file_pb2.FILE_TYPE_OTHER,
}


def _entry(stat: FileStat) -> file_pb2.FileEntry:
    """The proto of a path's entry."""
    entry = file_pb2.FileEntry(
        path=stat.path,
        name=stat.name,
        type=_FILE_TYPES[stat.kind],
        size=stat.size,
        mode=stat.mode,
        symlink_target=stat.symlink_target,
    )
    if stat.modify_time is not None:
        entry.modify_time.FromDatetime(stat.modify_time)
    if stat.uid is not None:
        entry.uid = stat.uid
    if stat.gid is not None:
        entry.gid = stat.gid
    return entry


_NETWORK_MODES = frozenset(sandbox_pb2.NetworkMode.values())


def _spec(msg: sandbox_pb2.SandboxSpec) -> Spec:
    """The domain spec of a request, refusing what the domain record cannot say."""
    if msg.network not in _NETWORK_MODES:
        raise InvalidArgument(f"spec.network: unknown network mode {msg.network}")
    return convert.spec_from_proto(msg)


def grpc_service(servicer: SandboxServicer) -> AioService:
    """The servicer as an :class:`AioService` for ``build_aio_server``/``serve_in_process``."""
    return AioService(
        SERVICE_NAME,
        lambda server: sandbox_service_pb2_grpc.add_SandboxServiceServicer_to_server(
            servicer, server
        ),
    )
