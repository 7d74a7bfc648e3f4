"""A process's output: a bounded ring with absolute offsets, many readers.

The process's reader thread appends; readers on the event loop read from an
offset and wait for more. Offsets count every byte the process ever wrote
(stdout, stderr and PTY bytes in one sequence), so a caller that reconnects
says where it left off. The ring keeps at most ``capacity`` bytes: a reader
whose offset fell out of it is told where the retained output starts
(:class:`~.records.Skipped`) and goes on from there.

Waiting readers are futures on their own loops, woken with
``call_soon_threadsafe``: a held reader costs a coroutine, never a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from services.sandbox.model import OutputChunk, StreamKind
from services.sandbox.processes.records import Piece, Skipped

_Waiter = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]
#: Largest piece of output kept (and so sent) as one.
PIECE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Slice:
    """What :meth:`OutputBuffer.read` found from an offset."""

    #: Set when the offset had left the ring: where the retained output starts.
    skipped_to: int | None
    pieces: list[Piece]
    #: The offset after the last byte written so far.
    end: int
    #: No more output will come.
    closed: bool


class OutputBuffer:
    """The last ``capacity`` bytes of a process's output, by absolute offset.

    Args:
        capacity: Bytes kept at most (``sandbox.process_output_buffer_bytes``).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        # The reader thread appends while loop coroutines read: one lock.
        self._lock = threading.Lock()
        self._pieces: deque[Piece] = deque()
        self._start = 0
        self._end = 0
        self._size = 0
        self._closed = False
        self._waiters: list[_Waiter] = []

    @property
    def end(self) -> int:
        """Bytes written so far (the next offset)."""
        with self._lock:
            return self._end

    @property
    def start(self) -> int:
        """Offset of the oldest byte still kept."""
        with self._lock:
            return self._start

    def append(self, stream: StreamKind, data: bytes) -> None:
        """Adds output (any thread); drops the oldest bytes beyond the capacity.

        Output is kept in pieces of at most :data:`PIECE_BYTES`, so every
        message a reader sends stays small whatever one write of the process.
        """
        if not data:
            return
        with self._lock:
            if self._closed:
                return
            for start in range(0, len(data), PIECE_BYTES):
                part = data[start : start + PIECE_BYTES]
                self._pieces.append(Piece(self._end, OutputChunk(stream, part)))
                self._end += len(part)
                self._size += len(part)
            self._trim()
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    def _trim(self) -> None:
        while self._size > self._capacity:
            oldest = self._pieces[0]
            excess = self._size - self._capacity
            size = len(oldest.chunk.data)
            if size <= excess:
                self._pieces.popleft()
                self._size -= size
                self._start = oldest.offset + size
                continue
            # Cut the oldest piece's head: the ring keeps exactly ``capacity``.
            kept = oldest.chunk.data[excess:]
            self._pieces[0] = Piece(oldest.offset + excess, OutputChunk(oldest.chunk.stream, kept))
            self._size -= excess
            self._start = oldest.offset + excess

    def close(self) -> None:
        """No more output (any thread); wakes every reader."""
        with self._lock:
            self._closed = True
            waiters, self._waiters = self._waiters, []
        _wake(waiters)

    def read(self, offset: int) -> Slice:
        """Everything kept from ``offset`` on (at most ``capacity`` bytes)."""
        with self._lock:
            skipped: int | None = None
            if offset < self._start:
                skipped, offset = self._start, self._start
            found: list[Piece] = []
            # Readers are mostly near the end: walk back from the newest piece.
            for piece in reversed(self._pieces):
                size = len(piece.chunk.data)
                if piece.offset + size <= offset:
                    break
                if piece.offset < offset:
                    cut = offset - piece.offset
                    found.append(
                        Piece(offset, OutputChunk(piece.chunk.stream, piece.chunk.data[cut:]))
                    )
                else:
                    found.append(piece)
            found.reverse()
            return Slice(skipped, found, self._end, self._closed)

    async def wait_beyond(self, offset: int) -> None:
        """Returns once output past ``offset`` exists or the buffer is closed."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._end > offset or self._closed:
                return
            future: asyncio.Future[None] = loop.create_future()
            # Readers that went away leave done futures behind: drop them here,
            # so a silent process with many reconnects keeps a short list.
            self._waiters = [w for w in self._waiters if not w[1].done()]
            self._waiters.append((loop, future))
        await future

    async def follow(self, offset: int) -> AsyncIterator[Piece | Skipped]:
        """The output from ``offset``, then live output, until the buffer closes."""
        while True:
            part = self.read(offset)
            if part.skipped_to is not None:
                yield Skipped(part.skipped_to)
                offset = part.skipped_to
            for piece in part.pieces:
                yield piece
                offset = piece.offset + len(piece.chunk.data)
            if part.closed and offset >= part.end:
                return
            await self.wait_beyond(offset)


def _wake(waiters: list[_Waiter]) -> None:
    for loop, future in waiters:
        # A loop that already stopped has no reader left to wake.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
