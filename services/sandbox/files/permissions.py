"""The sandbox a file op acts on, a path's stat, and what the sandbox's user may do.

The base of :class:`~services.sandbox.files.SandboxFiles`: every other
half (writes, reads, listing, tools) builds on these checks.
"""

from __future__ import annotations

import dataclasses
import io
import posixpath
import tarfile
from typing import TYPE_CHECKING

import docker.errors
import requests

from services.runtime.errors import FailedPrecondition, NotFound, PermissionDenied, quote
from services.sandbox.access import short_id
from services.sandbox.docker_client import engine_call
from services.sandbox.files.archive import ChunkReader, chunks_of, stat_of_member, stat_of_response
from services.sandbox.files.entries import FileKind, FileStat, Target

if TYPE_CHECKING:
    from services.sandbox.manager import SandboxManager


class FileAccess:
    """The engine client, settings and checks every file op of a manager shares.

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
        # A paused sandbox is resumed for the file op (transparent resume, as
        # for Exec); the engine reports a paused container as Running.
        if self.manager.pauses.ensure_running(info.sandbox_id):
            info = dataclasses.replace(info, state="running")
        self.manager.touch(info.sandbox_id)
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
        return stat_of_response(path, response)

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
            chunks = chunks_of(response, 64 * 1024)
            with tarfile.open(fileobj=ChunkReader(chunks), mode="r|") as tar:
                member = tar.next()
        except tarfile.TarError as exc:
            raise FailedPrecondition(f"archive of {quote(path)} unreadable: {exc}") from exc
        finally:
            response.close()
        if member is None:
            raise FailedPrecondition(f"archive of {quote(path)} is empty")
        return stat_of_member(path, member)

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
        if not allows(entry, uid, gid, need):
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


def allows(entry: FileStat, uid: int, gid: int, need: int) -> bool:
    """Whether ``uid:gid`` holds the ``need`` bits (4 r, 2 w, 1 x) on an owned entry."""
    if uid == 0:
        return True
    shift = 6 if entry.uid == uid else 3 if entry.gid == gid else 0
    return (entry.mode >> shift) & need == need
