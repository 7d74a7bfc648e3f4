"""The seven file RPCs of SandboxService and their streaming relays.

A mixin of :class:`~services.sandbox.server.SandboxServicer`, like the
kanban servicer's (:mod:`services.kanban.server_runs`): the handlers convert
protos to :mod:`.files` calls and back, in the servicer's blocking pool. A
WriteFiles pool thread pulls the caller's messages (read a few ahead on the
loop) into the engine's upload; a ReadFile pool thread reads the engine a few
chunks ahead of the caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Generator
from concurrent import futures
from typing import TYPE_CHECKING, Any, TypeVar

from grpc import aio
from longshore.sandbox.v1 import file_pb2, sandbox_service_pb2

from services.runtime.errors import Cancelled, InvalidArgument
from services.runtime.interceptors import Malformed
from services.sandbox import files
from services.sandbox.access import SandboxAccess
from services.sandbox.files import FileStat, Target
from services.sandbox.manager import SandboxManager

#: How often a WriteFiles pull waiting for the caller's next message checks the call ended.
PULL_POLL_SECONDS = 1.0

T = TypeVar("T")
Context = aio.ServicerContext[Any, Any]


class FileRpcs:
    """Mixin for :class:`~services.sandbox.server.SandboxServicer`: the file RPCs."""

    manager: SandboxManager
    access: SandboxAccess
    # The servicer's lock and set of transfers in flight (see its __init__).
    _streams_lock: threading.Lock
    _transfers: set[Transfer]

    if TYPE_CHECKING:
        # The servicer's pool runner (defined there, shared with the other RPCs).
        async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...

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


#: A file transfer in flight, which the servicer's shutdown must be able to stop.
Transfer = _ReadAhead | _WriteParts
