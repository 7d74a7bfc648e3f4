"""What a file op names and returns: kinds, entries, write headers, the target sandbox."""

from __future__ import annotations

import enum
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from services.sandbox.model import SandboxInfo


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
