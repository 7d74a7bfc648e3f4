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

from services.sandbox.files.archive import CHUNK_BYTES
from services.sandbox.files.entries import FileHeader, FileKind, FileStat, Part, Pull, Target
from services.sandbox.files.listing import (
    DEFAULT_PAGE,
    MAX_DEPTH,
    MAX_PAGE,
    decode_page_token,
    depth_of,
    encode_page_token,
    page_size,
)
from services.sandbox.files.paths import MAX_PATH_BYTES, check_mode, check_path
from services.sandbox.files.reads import FileReads
from services.sandbox.files.tools import TOOL_TIMEOUT_SECONDS, FileTools
from services.sandbox.files.writes import FileWrites

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_PAGE",
    "MAX_DEPTH",
    "MAX_PAGE",
    "MAX_PATH_BYTES",
    "TOOL_TIMEOUT_SECONDS",
    "FileHeader",
    "FileKind",
    "FileStat",
    "Part",
    "Pull",
    "SandboxFiles",
    "Target",
    "check_mode",
    "check_path",
    "decode_page_token",
    "depth_of",
    "encode_page_token",
    "page_size",
]


class SandboxFiles(FileWrites, FileReads, FileTools):
    """File operations on this manager's sandboxes.

    One class of mixins, a module per concern: :mod:`.permissions` (the
    target, stat and access checks all share), :mod:`.writes`, :mod:`.reads`,
    :mod:`.listing` and :mod:`.tools` (move and remove).

    Args:
        manager: The manager whose engine client, settings and exec are used.
    """
