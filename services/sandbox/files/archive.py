"""Tar streaming in and out of the engine's archive API, and the entries it describes.

Writes send a tar of known length as the caller's bytes arrive; reads and
listings parse the tar the engine streams back; a stat is decoded from the
``X-Docker-Container-Path-Stat`` header (Go's ``os.FileMode`` bits).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import posixpath
import tarfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import requests

from services.runtime.errors import FailedPrecondition, InvalidArgument, quote
from services.sandbox.docker_client import parse_docker_time
from services.sandbox.files.entries import FileKind, FileStat, Pull

#: Largest data chunk a read yields (well under the gateway's 4 MiB message bound).
CHUNK_BYTES = 1024 * 1024
BLOCK = tarfile.BLOCKSIZE

# Go's os.FileMode bits, as the engine's stat header encodes a path's mode.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_SETUID = 1 << 23
_GO_SETGID = 1 << 22
_GO_STICKY = 1 << 20
_GO_OTHER = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


def from_go_mode(raw: int) -> tuple[FileKind, int]:
    perm = raw & 0o777
    perm |= 0o4000 if raw & _GO_SETUID else 0
    perm |= 0o2000 if raw & _GO_SETGID else 0
    perm |= 0o1000 if raw & _GO_STICKY else 0
    if raw & _GO_DIR:
        return FileKind.DIRECTORY, perm
    if raw & _GO_SYMLINK:
        return FileKind.SYMLINK, perm
    if raw & _GO_OTHER:
        return FileKind.OTHER, perm
    return FileKind.FILE, perm


def kind_of_member(member: tarfile.TarInfo) -> FileKind:
    if member.isdir():
        return FileKind.DIRECTORY
    if member.issym():
        return FileKind.SYMLINK
    if member.isreg():
        return FileKind.FILE
    return FileKind.OTHER


class ChunkReader(io.RawIOBase):
    """A file-like view of the engine's chunk iterator, for ``tarfile``'s stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._buffer:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer = memoryview(chunk)
        size = min(len(target), len(self._buffer))
        target[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


class SizedBody:
    """A streamed request body of known length.

    With a length the HTTP client sends ``Content-Length`` and writes each
    piece to the socket as is, instead of chunked framing (a copy per piece).
    """

    def __init__(self, pieces: Iterator[bytes], length: int) -> None:
        self._pieces = pieces
        self._length = length

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[bytes]:
        return self._pieces


class WriteFailure:
    """Holds the error a tar generator hit, so it outlives the HTTP client wrapping it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


def stat_of_response(path: str, response: requests.Response) -> FileStat:
    """A path's entry from the stat header the engine sends with every archive answer."""
    header = response.headers.get("X-Docker-Container-Path-Stat", "")
    try:
        data = json.loads(base64.b64decode(header))
    except (ValueError, binascii.Error):
        raise FailedPrecondition(f"engine sent no stat for {quote(path)}") from None
    kind, perm = from_go_mode(int(data.get("mode") or 0))
    return FileStat(
        path=path,
        kind=kind,
        size=int(data.get("size") or 0) if kind is FileKind.FILE else 0,
        mode=perm,
        modify_time=parse_docker_time(str(data.get("mtime") or "")),
        symlink_target=str(data.get("linkTarget") or "") if kind is FileKind.SYMLINK else "",
    )


def chunks_of(response: requests.Response, size: int) -> Iterator[bytes]:
    """The body of an engine answer in pieces of about ``size`` bytes.

    ``raw.stream`` yields each HTTP chunk of the engine's chunked answer
    (~32 KiB), which made a 100 MB read 3,200 gRPC messages; ``raw.read(size)``
    buffers slowly in urllib3. Joining the stream's pieces costs one copy.
    """
    pending: list[bytes] = []
    held = 0
    for piece in response.raw.stream(64 * 1024, decode_content=False):
        pending.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(pending)
            pending.clear()
            held = 0
    if pending:
        yield b"".join(pending)


#: Bytes gathered before a file's tar headers are parsed (PAX headers included).
_HEAD_BYTES = 64 * 1024


def first_member(chunks: Iterator[bytes]) -> tuple[tarfile.TarInfo | None, bytes]:
    """The first member of a streamed tar, and the bytes of its data already read."""
    head = b""
    for chunk in chunks:
        head += chunk
        if len(head) >= _HEAD_BYTES:
            break
    # tarfile parses the headers from the gathered bytes; the data that
    # follows them is the caller's to stream on.
    with tarfile.open(fileobj=io.BytesIO(head), mode="r:") as tar:
        member = tar.next()
    if member is None:
        return None, b""
    return member, head[member.offset_data :]


def data_of(path: str, size: int, pull: Pull) -> Iterator[bytes]:
    """The data parts of one file, exactly ``size`` bytes of them."""
    remaining = size
    while remaining > 0:
        part = pull()
        if not isinstance(part, bytes):
            raise InvalidArgument(
                f"data: {quote(path)} ended after {size - remaining} of its {size} bytes"
            )
        if len(part) > remaining:
            raise InvalidArgument(f"data: more than the {size} bytes of {quote(path)}'s header")
        remaining -= len(part)
        if part:
            yield part


def dir_block(base: str, directory: str, mode: int, uid: int, gid: int, now: float) -> bytes:
    info = tarfile.TarInfo(posixpath.relpath(directory, base))
    info.type = tarfile.DIRTYPE
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, now
    return info.tobuf(format=tarfile.PAX_FORMAT)


def stat_of_member(path: str, member: tarfile.TarInfo) -> FileStat:
    kind = kind_of_member(member)
    return FileStat(
        path=path,
        kind=kind,
        size=member.size if kind is FileKind.FILE else 0,
        mode=member.mode & 0o7777,
        modify_time=datetime.fromtimestamp(int(member.mtime), UTC),
        symlink_target=member.linkname if kind is FileKind.SYMLINK else "",
        uid=member.uid,
        gid=member.gid,
    )
