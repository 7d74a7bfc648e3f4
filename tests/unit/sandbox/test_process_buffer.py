"""The process output ring: absolute offsets, trimming, skips and waiting readers."""

from __future__ import annotations

import asyncio
import threading

from services.sandbox.model import StreamKind
from services.sandbox.processes.buffer import PIECE_BYTES, OutputBuffer
from services.sandbox.processes.records import Piece, Skipped

OUT = StreamKind.STDOUT
ERR = StreamKind.STDERR


def data_of(pieces: list[Piece]) -> bytes:
    return b"".join(p.chunk.data for p in pieces)


def test_offsets_count_every_stream_in_one_sequence() -> None:
    buffer = OutputBuffer(100)
    buffer.append(OUT, b"abc")
    buffer.append(ERR, b"de")
    part = buffer.read(0)
    assert [(p.offset, p.chunk.stream) for p in part.pieces] == [(0, OUT), (3, ERR)]
    assert part.end == 5 and part.skipped_to is None and not part.closed
    middle = buffer.read(4)
    assert [(p.offset, p.chunk.data) for p in middle.pieces] == [(4, b"e")]
    assert buffer.read(5).pieces == []


def test_the_ring_keeps_exactly_its_capacity_and_reports_the_skip() -> None:
    buffer = OutputBuffer(4)
    buffer.append(OUT, b"abc")
    buffer.append(OUT, b"defg")
    assert buffer.start == 3 and buffer.end == 7
    part = buffer.read(1)
    assert part.skipped_to == 3 and data_of(part.pieces) == b"defg"
    # One piece bigger than the ring keeps only its tail.
    buffer.append(ERR, b"0123456789")
    part = buffer.read(0)
    assert part.skipped_to == 13 and data_of(part.pieces) == b"6789"
    assert part.pieces[0].offset == 13


def test_readers_wait_for_output_from_another_thread_and_see_the_close() -> None:
    buffer = OutputBuffer(1024)

    async def follow() -> list[Piece | Skipped]:
        return [part async for part in buffer.follow(0)]

    def produce() -> None:
        buffer.append(OUT, b"one")
        buffer.append(OUT, b"two")
        buffer.close()

    async def main() -> tuple[list[Piece | Skipped], list[Piece | Skipped]]:
        readers = asyncio.gather(follow(), follow())
        await asyncio.sleep(0)  # both readers wait before any output exists
        threading.Thread(target=produce).start()
        first, second = await asyncio.wait_for(readers, 30)
        return first, second

    first, second = asyncio.run(main())
    for seen in (first, second):
        assert all(isinstance(p, Piece) for p in seen)
        assert b"".join(p.chunk.data for p in seen if isinstance(p, Piece)) == b"onetwo"


def test_a_follow_from_a_lost_offset_starts_with_a_skip() -> None:
    buffer = OutputBuffer(3)
    buffer.append(OUT, b"abcdef")
    buffer.close()

    async def follow() -> list[Piece | Skipped]:
        return [part async for part in buffer.follow(1)]

    seen = asyncio.run(follow())
    assert seen[0] == Skipped(3)
    assert [(p.offset, p.chunk.data) for p in seen[1:] if isinstance(p, Piece)] == [(3, b"def")]


def test_appends_after_the_close_are_dropped() -> None:
    buffer = OutputBuffer(10)
    buffer.close()
    buffer.append(OUT, b"late")
    assert buffer.end == 0 and buffer.read(0).closed


def test_a_big_write_is_kept_in_bounded_pieces() -> None:
    buffer = OutputBuffer(10 * PIECE_BYTES)
    buffer.append(OUT, b"x" * (2 * PIECE_BYTES + 1))
    pieces = buffer.read(0).pieces
    assert [len(p.chunk.data) for p in pieces] == [PIECE_BYTES, PIECE_BYTES, 1]
    assert [p.offset for p in pieces] == [0, PIECE_BYTES, 2 * PIECE_BYTES]
