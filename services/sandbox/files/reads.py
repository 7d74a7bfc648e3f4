"""Reading a file: the engine's archive relayed in chunks, its tar framing cut off."""

from __future__ import annotations

import itertools
import tarfile
from collections.abc import Generator
from dataclasses import replace

import requests

from services.runtime.errors import FailedPrecondition, ResourceExhausted, quote
from services.sandbox.docker_client import translate
from services.sandbox.files.archive import (
    CHUNK_BYTES,
    chunks_of,
    first_member,
    stat_of_member,
    stat_of_response,
)
from services.sandbox.files.entries import FileKind, FileStat, Target
from services.sandbox.files.paths import check_path
from services.sandbox.files.permissions import FileAccess


class FileReads(FileAccess):
    """Mixin of :class:`~services.sandbox.files.SandboxFiles`: ReadFile."""

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
            entry = stat_of_response(path, response)
            if entry.kind is not FileKind.FILE:
                raise FailedPrecondition(f"path: {quote(path)} is a {entry.kind.value}, not a file")
            if entry.size > self.max_file_bytes:
                raise ResourceExhausted(
                    f"path: {quote(path)} has {entry.size} bytes, over sandbox.max_file_bytes "
                    f"({self.max_file_bytes})"
                )
            chunks = chunks_of(response, CHUNK_BYTES)
            member, first = first_member(chunks)
            if member is None or not member.isreg():
                raise FailedPrecondition(f"path: {quote(path)} changed while read")
            owned = stat_of_member(path, member)
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
