"""Listing a directory from the tar headers of its archive, and the listing's page rules."""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
import tarfile

import requests

from services.runtime.errors import FailedPrecondition, InvalidArgument, OutOfRange, quote
from services.sandbox.docker_client import translate
from services.sandbox.files.archive import CHUNK_BYTES, ChunkReader, chunks_of, stat_of_member
from services.sandbox.files.entries import FileKind, FileStat, Target
from services.sandbox.files.permissions import FileAccess, allows

#: Deepest listing.
MAX_DEPTH = 32
#: Listing page sizes.
DEFAULT_PAGE = 100
MAX_PAGE = 1000


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


class FileListing(FileAccess):
    """Mixin of :class:`~services.sandbox.files.SandboxFiles`: ListDirectory."""

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
            chunks = chunks_of(response, CHUNK_BYTES)
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r|", bufsize=CHUNK_BYTES) as tar:
                for member in tar:
                    # Names start with the directory's own name ("work/a/b").
                    parts = member.name.strip("/").split("/")[1:]
                    if not parts or len(parts) > depth:
                        continue
                    full = posixpath.join(path, *parts)
                    if any(full.startswith(h + "/") for h in hidden):
                        continue
                    entry = stat_of_member(full, member)
                    searchable = user is None or allows(entry, user[0], user[1], 5)
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
