"""Move and remove, which exec the image's ``mv``/``rm``: the archive API has neither.

An image without the tool is FAILED_PRECONDITION naming it.
"""

from __future__ import annotations

import posixpath

from services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, quote
from services.sandbox.access import short_id
from services.sandbox.files.entries import FileKind, FileStat, Target
from services.sandbox.files.listing import FileListing
from services.sandbox.files.paths import check_path
from services.sandbox.model import ExecCommand, ExecExit, OutputChunk

#: Timeout of a ``mv``/``rm`` exec.
TOOL_TIMEOUT_SECONDS = 120.0


class FileTools(FileListing):
    """Mixin of :class:`~services.sandbox.files.SandboxFiles`: MovePath and RemovePath.

    A listing mixin too: RemovePath refuses a non-empty directory without recursive.
    """

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
