"""Writing files and making directories: a tar streamed into the engine's ``put_archive``."""

from __future__ import annotations

import posixpath
import tarfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

from services.runtime.errors import (
    AlreadyExists,
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    quote,
)
from services.sandbox.docker_client import engine_call
from services.sandbox.files.archive import BLOCK, SizedBody, WriteFailure, data_of, dir_block
from services.sandbox.files.entries import FileHeader, FileKind, FileStat, Pull, Target
from services.sandbox.files.paths import check_mode, check_path
from services.sandbox.files.permissions import FileAccess


class FileWrites(FileAccess):
    """Mixin of :class:`~services.sandbox.files.SandboxFiles`: WriteFiles and MakeDirectory."""

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
        failure = WriteFailure()

        info = tarfile.TarInfo(posixpath.relpath(path, base))
        info.size, info.mode, info.uid, info.gid, info.mtime = header.size, mode, uid, gid, now
        blocks = [dir_block(base, d, 0o755, uid, gid, now) for d in missing]
        blocks.append(info.tobuf(format=tarfile.PAX_FORMAT))
        prefix = b"".join(blocks)
        suffix = b"\0" * ((BLOCK - header.size % BLOCK) % BLOCK) + b"\0" * (2 * BLOCK)

        def tar_stream() -> Iterator[bytes]:
            try:
                yield prefix
                yield from data_of(path, header.size, pull)
                yield suffix
            except BaseException as exc:
                # The HTTP client may wrap or swallow what a body generator
                # raises; keep it so the caller sees the precise error.
                failure.error = exc
                raise

        body = SizedBody(tar_stream(), len(prefix) + header.size + len(suffix))
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
        self, cid: str, base: str, body: Iterable[bytes] | bytes, failure: WriteFailure, path: str
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
        blocks = [dir_block(base, d, mode, owner_uid, owner_gid, now) for d in [*missing, path]]
        blocks.append(b"\0" * (2 * BLOCK))
        self._put(target.cid, base, b"".join(blocks), WriteFailure(), path)
        made = FileStat(
            path=path,
            kind=FileKind.DIRECTORY,
            mode=mode,
            modify_time=datetime.fromtimestamp(int(now), UTC),
            uid=owner_uid,
            gid=owner_gid,
        )
        return made, True
