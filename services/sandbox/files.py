"""Files in a sandbox through the engine's archive API: write, read, list, stat, mkdir, mv, rm.

The archive API (``PUT``/``GET``/``HEAD /containers/{id}/archive``) works in
any image, even one without a shell: writes are a tar streamed into
``put_archive`` as the caller's bytes arrive (never built whole in memory),
reads stream ``get_archive``'s tar out in chunks, a stat is the ``HEAD``'s
``X-Docker-Container-Path-Stat`` header, a listing reads the tar headers of
a directory's archive (skipping the bytes), a directory is a tar directory
entry. The archive API has no move or remove, so those exec the image's
``mv``/``rm`` as the sandbox's user; an image without them is
FAILED_PRECONDITION naming the missing tool.

Two engine facts shape the rules. The archive API works on the daemon's view
of the container's filesystem, which does not include tmpfs mounts: a write
to ``/tmp`` (always a tmpfs in a sandbox) would land in the hidden directory
beneath and a read would not see what the sandbox wrote, so every path inside
a tmpfs mount is refused (FAILED_PRECONDITION). And the engine also copies
into a stopped container, which we refuse so that a file op means the same as
an Exec: the sandbox must be running.

Like :mod:`.execution`, this is a half of the manager: it talks to the engine
only through the manager's client and :func:`.docker_client.engine_call`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import io
import itertools
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import docker.errors
import requests

from services.runtime.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    quote,
)
from services.sandbox.access import short_id
from services.sandbox.docker_client import engine_call, parse_docker_time, translate
from services.sandbox.model import ExecCommand, ExecExit, OutputChunk, SandboxInfo

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager

#: Longest path accepted, in UTF-8 bytes (Linux's PATH_MAX).
MAX_PATH_BYTES = 4096
#: Largest data chunk a read yields (well under the gateway's 4 MiB message bound).
CHUNK_BYTES = 1024 * 1024
#: Deepest listing.
MAX_DEPTH = 32
#: Listing page sizes.
DEFAULT_PAGE = 100
MAX_PAGE = 1000
#: Timeout of a ``mv``/``rm`` exec.
TOOL_TIMEOUT_SECONDS = 120.0
_BLOCK = tarfile.BLOCKSIZE

# Go's os.FileMode bits, as the engine's stat header encodes a path's mode.
_GO_DIR = 1 << 31
_GO_SYMLINK = 1 << 27
_GO_SETUID = 1 << 23
_GO_SETGID = 1 << 22
_GO_STICKY = 1 << 20
_GO_OTHER = (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)
_SPECIAL_BITS = 0o6000  # setuid, setgid: operators only


class FileKind(enum.Enum):
    """What a path names."""

    FILE = "file"
    DIRECTORY = "directory"
    SYMLINK = "symlink"
    OTHER = "other"


@dataclass(frozen=True)
class FileStat:
    """One path in a sandbox."""

    path: str
    kind: FileKind
    size: int = 0
    mode: int = 0
    modify_time: datetime | None = None
    symlink_target: str = ""
    uid: int | None = None
    gid: int | None = None

    @property
    def name(self) -> str:
        """The last element of the path ("/" for the root)."""
        return posixpath.basename(self.path) or "/"


@dataclass(frozen=True)
class FileHeader:
    """One file of a write: where, how big, with which mode and owner."""

    path: str
    size: int
    mode: int = 0
    uid: int | None = None
    gid: int | None = None
    make_parents: bool = False


@dataclass(frozen=True)
class Target:
    """A sandbox as a file op needs it: id, labels (for access), user and tmpfs mounts."""

    info: SandboxInfo
    running: bool
    tmpfs: tuple[str, ...]

    @property
    def cid(self) -> str:
        """The container's full id."""
        return self.info.sandbox_id


#: What a write's stream yields: the next file's header, or the next bytes of
#: the current file; None at the end of the stream.
Part = FileHeader | bytes
Pull = Callable[[], Part | None]


def check_path(field_name: str, path: str) -> str:
    """Refuses a path that is not absolute and normalised; returns it.

    Raises:
        InvalidArgument: Empty, relative, not normalised (``.``, ``..``,
            ``//`` or a trailing ``/``), a NUL, or over 4096 bytes.
    """
    if not path:
        raise InvalidArgument(f"{field_name}: required")
    size = len(path.encode("utf-8", errors="surrogatepass"))
    if size > MAX_PATH_BYTES:
        raise InvalidArgument(f"{field_name}: at most {MAX_PATH_BYTES} bytes, got {size}")
    if "\x00" in path:
        raise InvalidArgument(f"{field_name}: contains a NUL byte")
    if not path.startswith("/"):
        raise InvalidArgument(f"{field_name}: {quote(path)} is not absolute")
    # normpath keeps a leading "//"; the root alone is "/".
    if path != "/" and (posixpath.normpath(path) != path or path.startswith("//")):
        raise InvalidArgument(
            f"{field_name}: {quote(path)} is not normalised (no '.', '..', '//' or trailing '/')"
        )
    return path


def check_mode(field_name: str, mode: int, *, operator: bool) -> None:
    """Refuses mode bits beyond 0o7777, and setuid/setgid from a non-operator.

    Raises:
        InvalidArgument: Over 0o7777.
        PermissionDenied: setuid/setgid asked by a non-operator.
    """
    if mode > 0o7777:
        raise InvalidArgument(f"{field_name}: {mode:#o} exceeds 0o7777")
    if mode & _SPECIAL_BITS and not operator:
        raise PermissionDenied(f"{field_name}: setuid/setgid bits are for operators only")


def encode_page_token(path: str, depth: int, offset: int) -> str:
    """An opaque token for the listing page that starts at ``offset``."""
    raw = json.dumps({"p": path, "d": depth, "o": offset}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def decode_page_token(token: str, path: str, depth: int) -> int:
    """The offset a token stands for (0 for no token).

    Raises:
        InvalidArgument: The token is garbage or for another path or depth.
    """
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = int(data["o"])
        same = data["p"] == path and int(data["d"]) == depth
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("page_token: malformed") from None
    if not same or offset < 0:
        raise InvalidArgument("page_token: for another path or depth")
    return offset


def _from_go_mode(raw: int) -> tuple[FileKind, int]:
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


def _kind_of_member(member: tarfile.TarInfo) -> FileKind:
    if member.isdir():
        return FileKind.DIRECTORY
    if member.issym():
        return FileKind.SYMLINK
    if member.isreg():
        return FileKind.FILE
    return FileKind.OTHER


class _ChunkReader(io.RawIOBase):
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


class _SizedBody:
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


class _WriteFailure:
    """Holds the error a tar generator hit, so it outlives the HTTP client wrapping it."""

    def __init__(self) -> None:
        self.error: BaseException | None = None


class SandboxFiles:
    """File operations on this manager's sandboxes.

    Args:
        manager: The manager whose engine client, settings and exec are used.
    """

    def __init__(self, manager: SandboxManager) -> None:
        self.manager = manager
        self.api = manager.api
        self.max_file_bytes = manager.section.max_file_bytes

    # ---- target --------------------------------------------------------------------

    def target(self, sandbox_id: str) -> Target:
        """The sandbox a file op acts on (one inspect).

        Raises:
            InvalidArgument: Empty or over-long sandbox_id.
            NotFound: No such sandbox in this deployment.
        """
        data = self.manager.inspect_managed(sandbox_id)
        info = self.manager.info_of(data)
        host = data.get("HostConfig") or {}
        mounts = [str(p) for p in (host.get("Tmpfs") or {})]
        mounts += [
            str(m.get("Destination") or m.get("Target") or "")
            for m in data.get("Mounts") or []
            if m.get("Type") == "tmpfs"
        ]
        running = bool((data.get("State") or {}).get("Running"))
        return Target(info=info, running=running, tmpfs=tuple(sorted({m for m in mounts if m})))

    def check_reachable(self, target: Target, field_name: str, path: str) -> None:
        """Refuses a stopped sandbox and a path inside a tmpfs mount.

        Raises:
            FailedPrecondition: The sandbox is not running, or the path is in a tmpfs.
        """
        if not target.running:
            raise FailedPrecondition(
                f"sandbox {short_id(target.cid)} is not running ({target.info.state})"
            )
        for mount in target.tmpfs:
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                raise FailedPrecondition(
                    f"{field_name}: {quote(path)} is inside the tmpfs mount {quote(mount)}, "
                    "which the engine's archive API cannot see; use a path on the sandbox's "
                    "filesystem or a volume"
                )

    def default_owner(self, target: Target) -> tuple[int, int]:
        """The owner a file gets when the caller names none: the sandbox's user.

        A numeric ``uid[:gid]`` is used as is; a name is looked up in the
        image's ``/etc/passwd`` (through the archive API); no user is root.
        """
        user = target.info.user
        if not user:
            return 0, 0
        name, _, group = user.partition(":")
        if name.isdigit():
            uid = int(name)
            return uid, int(group) if group.isdigit() else uid
        for line in self._small_file(target.cid, "/etc/passwd").decode(errors="replace").split():
            fields = line.split(":")
            if len(fields) >= 4 and fields[0] == name and fields[2].isdigit():
                gid = int(fields[3]) if fields[3].isdigit() else int(fields[2])
                return int(fields[2]), int(group) if group.isdigit() else gid
        raise FailedPrecondition(
            f"sandbox user {quote(user)} is not in the image's /etc/passwd; name uid and gid"
        )

    def owner(
        self, target: Target, uid: int | None, gid: int | None, *, operator: bool
    ) -> tuple[int, int]:
        """The owner of a new file or directory, within what the caller may ask.

        Raises:
            PermissionDenied: A non-operator named an owner other than the sandbox's user.
        """
        default_uid, default_gid = self.default_owner(target)
        chosen = (default_uid if uid is None else uid, default_gid if gid is None else gid)
        if not operator and chosen != (default_uid, default_gid):
            raise PermissionDenied(
                f"owner: {chosen[0]}:{chosen[1]} differs from the sandbox's user "
                f"{default_uid}:{default_gid}; only an operator may choose the owner"
            )
        return chosen

    # ---- stat ----------------------------------------------------------------------

    def stat(self, target: Target, path: str, field_name: str = "path") -> FileStat:
        """Describes one path (a symlink itself), from the archive's stat header.

        Raises:
            NotFound: The path does not exist.
        """
        found = self._stat_or_none(target.cid, path)
        if found is None:
            raise NotFound(
                f"{field_name}: {quote(path)} not found in sandbox {short_id(target.cid)}"
            )
        return found

    def _stat_or_none(self, cid: str, path: str) -> FileStat | None:
        # docker-py has no call for the archive's HEAD (the stat alone).
        url = f"{self.api.base_url}/v{self.api.api_version}/containers/{cid}/archive"
        with engine_call("containers.archive_stat", resource=f"path {quote(path)}", sandbox_id=cid):
            response = self.api.head(url, params={"path": path})
            if response.status_code == 404:
                return None
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as exc:
                raise docker.errors.create_api_error_from_http_exception(exc) from exc
        return _stat_of_response(path, response)

    # ---- write ---------------------------------------------------------------------

    def write(self, target: Target, pull: Pull, *, operator: bool) -> list[FileStat]:
        """Writes the files a stream carries, each streamed into the engine as it arrives.

        ``pull`` returns the stream's next part (None at its end); it is called
        only from inside this method, so the caller's bytes flow straight into
        the engine's request without being gathered.

        Raises:
            InvalidArgument: Parts out of order, data not adding up to a size.
            ResourceExhausted: A file over ``sandbox.max_file_bytes``.
            NotFound: A parent directory is missing (and make_parents is off).
            FailedPrecondition: The path is a directory; the engine refused.
        """
        written: list[FileStat] = []
        while (part := pull()) is not None:
            if isinstance(part, bytes):
                if part:
                    raise InvalidArgument("data: arrived before a header")
                continue
            written.append(self._write_one(target, part, pull, operator=operator))
        return written

    def _write_one(
        self, target: Target, header: FileHeader, pull: Pull, *, operator: bool
    ) -> FileStat:
        path = check_path("header.path", header.path)
        if path == "/":
            raise InvalidArgument("header.path: '/' is a directory")
        if header.size < 0:
            raise InvalidArgument(f"header.size: must not be negative, got {header.size}")
        if header.size > self.max_file_bytes:
            raise ResourceExhausted(
                f"header.size: {header.size} bytes for {quote(path)} exceeds "
                f"sandbox.max_file_bytes ({self.max_file_bytes})"
            )
        mode = header.mode or 0o644
        check_mode("header.mode", mode, operator=operator)
        self.check_reachable(target, "header.path", path)
        uid, gid = self.owner(target, header.uid, header.gid, operator=operator)
        # Never let a file replace a directory: the engine's extraction
        # would remove the whole tree to put the file there.
        existing = self._stat_or_none(target.cid, path)
        if existing is not None and existing.kind is FileKind.DIRECTORY:
            raise FailedPrecondition(f"header.path: {quote(path)} is a directory")
        if existing is not None:
            # The file exists, so its parent is a directory: one stat, not two.
            base, missing = posixpath.dirname(path), list[str]()
        else:
            base, missing = self._existing_ancestor(
                target.cid, posixpath.dirname(path), header.make_parents, "header.path"
            )
        self.require_access(target, base, 3, "header.path", operator=operator)
        if existing is not None:
            self.require_access(target, path, 2, "header.path", operator=operator)
        now = time.time()
        failure = _WriteFailure()

        info = tarfile.TarInfo(posixpath.relpath(path, base))
        info.size, info.mode, info.uid, info.gid, info.mtime = header.size, mode, uid, gid, now
        blocks = [_dir_block(base, d, 0o755, uid, gid, now) for d in missing]
        blocks.append(info.tobuf(format=tarfile.PAX_FORMAT))
        prefix = b"".join(blocks)
        suffix = b"\0" * ((_BLOCK - header.size % _BLOCK) % _BLOCK) + b"\0" * (2 * _BLOCK)

        def tar_stream() -> Iterator[bytes]:
            try:
                yield prefix
                yield from _data_of(path, header.size, pull)
                yield suffix
            except BaseException as exc:
                # The HTTP client may wrap or swallow what a body generator
                # raises; keep it so the caller sees the precise error.
                failure.error = exc
                raise

        body = _SizedBody(tar_stream(), len(prefix) + header.size + len(suffix))
        self._put(target.cid, base, body, failure, path)
        return FileStat(
            path=path,
            kind=FileKind.FILE,
            size=header.size,
            mode=mode,
            modify_time=datetime.fromtimestamp(int(now), UTC),
            uid=uid,
            gid=gid,
        )

    def _put(
        self, cid: str, base: str, body: Iterable[bytes] | bytes, failure: _WriteFailure, path: str
    ) -> None:
        try:
            with engine_call(
                "containers.put_archive", resource=f"path {quote(base)}", sandbox_id=cid
            ):
                self.api.put_archive(cid, base, body)
        except BaseException as exc:
            if failure.error is not None and failure.error is not exc:
                error = failure.error
                if isinstance(error, ServiceError):
                    raise error from None
                raise Cancelled(
                    f"write of {quote(path)} ended early: the caller went away"
                ) from error
            raise

    def _existing_ancestor(
        self, cid: str, directory: str, make_parents: bool, field_name: str
    ) -> tuple[str, list[str]]:
        """The deepest existing ancestor of ``directory`` and the missing ones below it."""
        missing: list[str] = []
        current = directory
        while True:
            found = self._stat_or_none(cid, current)
            if found is not None:
                if found.kind is not FileKind.DIRECTORY:
                    raise FailedPrecondition(f"{field_name}: {quote(current)} is not a directory")
                return current, list(reversed(missing))
            if not make_parents:
                raise NotFound(
                    f"{field_name}: parent directory {quote(current)} not found "
                    f"(set make_parents to create it)"
                )
            missing.append(current)
            current = posixpath.dirname(current)

    # ---- read ----------------------------------------------------------------------

    def read(
        self, target: Target, path: str, *, operator: bool = True
    ) -> Generator[FileStat | bytes, None, None]:
        """Yields the file's entry, then its bytes in chunks of at most 1 MiB.

        Raises:
            NotFound: The path does not exist.
            FailedPrecondition: Not a regular file.
            ResourceExhausted: Larger than ``sandbox.max_file_bytes``.
        """
        check_path("path", path)
        self.check_reachable(target, "path", path)
        # One engine call: the archive's answer carries the stat header, and
        # its first tar header the owner, so type, size and access are
        # checked before any byte is relayed (and a directory is never read).
        response = self._archive(target.cid, path)
        try:
            entry = _stat_of_response(path, response)
            if entry.kind is not FileKind.FILE:
                raise FailedPrecondition(f"path: {quote(path)} is a {entry.kind.value}, not a file")
            if entry.size > self.max_file_bytes:
                raise ResourceExhausted(
                    f"path: {quote(path)} has {entry.size} bytes, over sandbox.max_file_bytes "
                    f"({self.max_file_bytes})"
                )
            chunks = _chunks_of(response, CHUNK_BYTES)
            member, first = _first_member(chunks)
            if member is None or not member.isreg():
                raise FailedPrecondition(f"path: {quote(path)} changed while read")
            owned = _stat_of_member(path, member)
            self._check_owned(target, owned, 4, "path", operator=operator)
            # No span is held across the yields: the consumer resumes this
            # generator from pool threads with different contexts.
            yield replace(entry, uid=owned.uid, gid=owned.gid)
            # The engine's chunks are relayed as they come, only the tar
            # framing cut off: no tarfile reads, no re-buffering.
            remaining = member.size
            for chunk in itertools.chain((first,), chunks):
                if remaining <= 0:
                    break
                piece = chunk[:remaining]
                remaining -= len(piece)
                if piece:
                    yield piece
            if remaining > 0:
                raise FailedPrecondition(f"path: {quote(path)} shrank while read")
        except tarfile.TarError as exc:
            raise FailedPrecondition(f"path: archive of {quote(path)} unreadable: {exc}") from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            resource = f"path {quote(path)}"
            raise (translate(exc, "containers.get_archive", resource=resource) or exc) from exc
        finally:
            response.close()

    def _archive(self, cid: str, path: str) -> requests.Response:
        """The engine's streamed archive of a path (the caller closes it).

        Not docker-py's ``get_archive``: its generator cannot close the
        response, and a listing or an owner check stops after a few headers
        of what may be a 100 MB archive.
        """
        url = f"{self.api.base_url}/v{self.api.api_version}/containers/{cid}/archive"
        with engine_call("containers.get_archive", resource=f"path {quote(path)}", sandbox_id=cid):
            # identity: the engine would otherwise gzip the tar (CPU on both
            # ends for bytes that cross a local socket).
            response = self.api.get(
                url,
                params={"path": path},
                headers={"Accept-Encoding": "identity"},
                stream=True,
                timeout=self.api.timeout,
            )
            try:
                response.raise_for_status()
            except requests.exceptions.HTTPError as exc:
                response.close()
                raise docker.errors.create_api_error_from_http_exception(exc) from exc
        return response

    def _owned_stat(self, cid: str, path: str) -> FileStat:
        """A path's entry with its owner: the first tar header of its archive."""
        response = self._archive(cid, path)
        try:
            chunks = _chunks_of(response, 64 * 1024)
            with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|") as tar:
                member = tar.next()
        except tarfile.TarError as exc:
            raise FailedPrecondition(f"archive of {quote(path)} unreadable: {exc}") from exc
        finally:
            response.close()
        if member is None:
            raise FailedPrecondition(f"archive of {quote(path)} is empty")
        return _stat_of_member(path, member)

    def require_access(
        self, target: Target, path: str, need: int, field_name: str, *, operator: bool
    ) -> None:
        """Refuses a non-operator what the sandbox's own user could not do to ``path``.

        The engine's archive calls run as root in the daemon, so without this
        a worker whose sandbox runs as ``nobody`` could read ``/etc/shadow`` or
        replace ``/bin/sh``: the sandbox's non-root user must hold here too.
        ``need`` is permission bits as for "other" (4 read, 2 write, 1 search).

        Raises:
            PermissionDenied: The sandbox's user lacks the permission.
        """
        if operator or self.default_owner(target)[0] == 0:
            return
        self._check_owned(target, self._owned_stat(target.cid, path), need, field_name)

    def _check_owned(
        self,
        target: Target,
        entry: FileStat,
        need: int,
        field_name: str,
        *,
        operator: bool = False,
    ) -> None:
        """:meth:`require_access` on an entry whose owner is known already."""
        if operator:
            return
        uid, gid = self.default_owner(target)
        path = entry.path
        if not _allows(entry, uid, gid, need):
            what = {4: "read", 2: "write", 6: "read and write", 3: "write into", 5: "list"}
            raise PermissionDenied(
                f"{field_name}: the sandbox's user {uid}:{gid} may not "
                f"{what.get(need, 'use')} {quote(path)} (mode {entry.mode:o}, "
                f"owner {entry.uid}:{entry.gid})"
            )

    def _small_file(self, cid: str, path: str, limit: int = 1024 * 1024) -> bytes:
        if self._stat_or_none(cid, path) is None:
            return b""
        with engine_call("containers.get_archive", resource=f"path {quote(path)}", sandbox_id=cid):
            chunks, stat = self.api.get_archive(cid, path)
            if int(stat.get("size") or 0) > limit:
                return b""
            raw = b"".join(chunks)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.next()
            reader = tar.extractfile(member) if member is not None else None
            return reader.read() if reader is not None else b""

    # ---- list ----------------------------------------------------------------------

    def list_directory(
        self,
        target: Target,
        path: str,
        *,
        depth: int,
        offset: int,
        limit: int,
        operator: bool = True,
    ) -> tuple[list[FileStat], bool]:
        """One page of a directory's entries down to ``depth``; and whether more follow.

        Raises:
            NotFound: The path does not exist.
            FailedPrecondition: Not a directory.
        """
        self.check_reachable(target, "path", path)
        entry = self.stat(target, path)
        if entry.kind is not FileKind.DIRECTORY:
            raise FailedPrecondition(
                f"path: {quote(path)} is a {entry.kind.value}, not a directory"
            )
        self.require_access(target, path, 5, "path", operator=operator)
        user = None if operator else self.default_owner(target)
        hidden: list[str] = []  # directories the sandbox's user may not list
        found: list[FileStat] = []
        seen = 0
        response = self._archive(target.cid, path)
        try:
            chunks = _chunks_of(response, CHUNK_BYTES)
            with tarfile.open(fileobj=_ChunkReader(chunks), mode="r|", bufsize=CHUNK_BYTES) as tar:
                for member in tar:
                    # Names start with the directory's own name ("work/a/b").
                    parts = member.name.strip("/").split("/")[1:]
                    if not parts or len(parts) > depth:
                        continue
                    full = posixpath.join(path, *parts)
                    if any(full.startswith(h + "/") for h in hidden):
                        continue
                    entry = _stat_of_member(full, member)
                    searchable = user is None or _allows(entry, user[0], user[1], 5)
                    if entry.kind is FileKind.DIRECTORY and not searchable:
                        hidden.append(full)
                    if seen >= offset + limit:
                        # One more than the page: there is a next page.
                        return found, True
                    if seen >= offset:
                        found.append(entry)
                    seen += 1
        except tarfile.TarError as exc:
            raise FailedPrecondition(f"path: archive of {quote(path)} unreadable: {exc}") from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            resource = f"path {quote(path)}"
            raise (translate(exc, "containers.get_archive", resource=resource) or exc) from exc
        finally:
            response.close()
        return found, False

    # ---- mkdir ---------------------------------------------------------------------

    def make_directory(
        self,
        target: Target,
        path: str,
        *,
        mode: int,
        uid: int | None,
        gid: int | None,
        make_parents: bool,
        operator: bool,
    ) -> tuple[FileStat, bool]:
        """Creates a directory (and its parents); returns it and whether it was created.

        Raises:
            NotFound: A parent is missing and make_parents is off.
            AlreadyExists: The path exists and is not a directory.
        """
        check_path("path", path)
        mode = mode or 0o755
        check_mode("mode", mode, operator=operator)
        self.check_reachable(target, "path", path)
        existing = self._stat_or_none(target.cid, path)
        if existing is not None:
            if existing.kind is not FileKind.DIRECTORY:
                raise AlreadyExists(f"path: {quote(path)} exists and is a {existing.kind.value}")
            return existing, False
        owner_uid, owner_gid = self.owner(target, uid, gid, operator=operator)
        base, missing = self._existing_ancestor(
            target.cid, posixpath.dirname(path), make_parents, "path"
        )
        self.require_access(target, base, 3, "path", operator=operator)
        now = time.time()
        blocks = [_dir_block(base, d, mode, owner_uid, owner_gid, now) for d in [*missing, path]]
        blocks.append(b"\0" * (2 * _BLOCK))
        self._put(target.cid, base, b"".join(blocks), _WriteFailure(), path)
        made = FileStat(
            path=path,
            kind=FileKind.DIRECTORY,
            mode=mode,
            modify_time=datetime.fromtimestamp(int(now), UTC),
            uid=owner_uid,
            gid=owner_gid,
        )
        return made, True

    # ---- move / remove (exec: the archive API has neither) -------------------------

    def move(self, target: Target, source: str, destination: str, *, overwrite: bool) -> FileStat:
        """Renames a path with the image's ``mv``.

        Raises:
            NotFound: The source, or the destination's parent, is missing.
            AlreadyExists: The destination exists and overwrite is off.
            FailedPrecondition: The destination is a directory, the image has
                no ``mv``, or ``mv`` failed.
        """
        check_path("source_path", source)
        check_path("destination_path", destination)
        if source == "/" or destination == "/":
            raise InvalidArgument("source_path: the root cannot be moved or replaced")
        if destination == source or destination.startswith(source + "/"):
            raise InvalidArgument(
                f"destination_path: {quote(destination)} is {quote(source)} or inside it"
            )
        self.check_reachable(target, "source_path", source)
        self.check_reachable(target, "destination_path", destination)
        moved = self.stat(target, source, "source_path")
        parent = posixpath.dirname(destination)
        self._existing_ancestor(target.cid, parent, False, "destination_path")
        existing = self._stat_or_none(target.cid, destination)
        if existing is not None:
            if not overwrite:
                raise AlreadyExists(f"destination_path: {quote(destination)} exists")
            if existing.kind is FileKind.DIRECTORY:
                # mv would move the source *into* it: never what a rename means.
                raise FailedPrecondition(
                    f"destination_path: {quote(destination)} is a directory; remove it first"
                )
        self._tool(target, ("mv", "-f", "--", source, destination))
        return FileStat(
            path=destination,
            kind=moved.kind,
            size=moved.size,
            mode=moved.mode,
            modify_time=moved.modify_time,
            symlink_target=moved.symlink_target,
        )

    def remove(self, target: Target, path: str, *, recursive: bool) -> FileStat:
        """Removes a path with the image's ``rm``.

        Raises:
            NotFound: The path is missing.
            FailedPrecondition: The root; a non-empty directory without
                recursive; the image has no ``rm``; ``rm`` failed.
        """
        check_path("path", path)
        if path == "/":
            raise FailedPrecondition("path: the root cannot be removed")
        self.check_reachable(target, "path", path)
        entry = self.stat(target, path)
        if entry.kind is FileKind.DIRECTORY and not recursive:
            children, _ = self.list_directory(target, path, depth=1, offset=0, limit=1)
            if children:
                raise FailedPrecondition(
                    f"path: directory {quote(path)} is not empty (set recursive to remove it)"
                )
        self._tool(target, ("rm", "-rf", "--", path))
        return entry

    def _tool(self, target: Target, argv: tuple[str, ...]) -> None:
        command = ExecCommand(argv=argv, timeout_seconds=TOOL_TIMEOUT_SECONDS)
        output = b""
        code = 0
        for event in self.manager.exec(target.cid, command):
            if isinstance(event, OutputChunk):
                output += event.data[: 4096 - len(output)] if len(output) < 4096 else b""
            elif isinstance(event, ExecExit):
                code = event.exit_code
        if code == 0:
            return
        text = " ".join(output.decode(errors="replace").split())[:200]
        if code in (126, 127) and ("not found" in text or "no such file" in text.lower()):
            raise FailedPrecondition(
                f"the image of sandbox {short_id(target.cid)} has no {quote(argv[0])}, which "
                f"{'MovePath' if argv[0] == 'mv' else 'RemovePath'} execs: {text}"
            )
        raise FailedPrecondition(f"{argv[0]} exited {code}: {text or '(no output)'}")


def _stat_of_response(path: str, response: requests.Response) -> FileStat:
    """A path's entry from the stat header the engine sends with every archive answer."""
    header = response.headers.get("X-Docker-Container-Path-Stat", "")
    try:
        data = json.loads(base64.b64decode(header))
    except (ValueError, binascii.Error):
        raise FailedPrecondition(f"engine sent no stat for {quote(path)}") from None
    kind, perm = _from_go_mode(int(data.get("mode") or 0))
    return FileStat(
        path=path,
        kind=kind,
        size=int(data.get("size") or 0) if kind is FileKind.FILE else 0,
        mode=perm,
        modify_time=parse_docker_time(str(data.get("mtime") or "")),
        symlink_target=str(data.get("linkTarget") or "") if kind is FileKind.SYMLINK else "",
    )


def _chunks_of(response: requests.Response, size: int) -> Iterator[bytes]:
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


def _first_member(chunks: Iterator[bytes]) -> tuple[tarfile.TarInfo | None, bytes]:
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


def _allows(entry: FileStat, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid:gid`` holds the ``need`` bits (4 r, 2 w, 1 x) on an owned entry."""
    if uid == 0:
        return True
    shift = 6 if entry.uid == uid else 3 if entry.gid == gid else 0
    return (entry.mode >> shift) & need == need


def _data_of(path: str, size: int, pull: Pull) -> Iterator[bytes]:
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


def _dir_block(base: str, directory: str, mode: int, uid: int, gid: int, now: float) -> bytes:
    info = tarfile.TarInfo(posixpath.relpath(directory, base))
    info.type = tarfile.DIRTYPE
    info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, now
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _stat_of_member(path: str, member: tarfile.TarInfo) -> FileStat:
    kind = _kind_of_member(member)
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


def page_size(value: int) -> int:
    """A listing page size: 0 = 100, capped at 1000.

    Raises:
        InvalidArgument: Negative.
    """
    if value < 0:
        raise InvalidArgument(f"page_size: must not be negative, got {value}")
    return min(value or DEFAULT_PAGE, MAX_PAGE)


def depth_of(value: int) -> int:
    """A listing depth: 0 = 1, at most 32.

    Raises:
        InvalidArgument: Negative.
        OutOfRange: Over 32.
    """
    if value < 0:
        raise InvalidArgument(f"depth: must not be negative, got {value}")
    if value > MAX_DEPTH:
        raise OutOfRange(f"depth: at most {MAX_DEPTH}, got {value}")
    return value or 1
