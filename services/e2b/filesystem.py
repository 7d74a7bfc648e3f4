"""envd's ``filesystem.Filesystem`` Connect service over the gateway's file RPCs.

Stat, MakeDir, Move, ListDir and Remove map one to one onto StatPath,
MakeDirectory (with parents), MovePath (overwriting, as envd's rename does),
ListDirectory (every page, bounded) and RemovePath (recursive, as envd's).
Watching a directory (WatchDir and the watcher calls) answers UNIMPLEMENTED:
the manager has no file-event RPC.
"""

from __future__ import annotations

import stat as stat_mod
from collections.abc import AsyncIterator
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.filesystem import filesystem_pb as fp
from e2b.envd.filesystem.filesystem_connect import Filesystem
from longshore.sandbox.v1 import file_pb2
from longshore.sandbox.v1 import sandbox_service_pb2 as spb
from protobuf.wkt import Timestamp

from services.e2b.envd import Target, target_of
from services.e2b.errors import connect_error_of
from services.e2b.gateway import Gateway
from services.e2b.sandboxes import Sandboxes

#: Most entries one ListDir answers with.
MAX_LISTED = 10_000
MAX_PATH_CHARS = 4096

_TYPES = {
    file_pb2.FILE_TYPE_FILE: fp.FileType.FILE,
    file_pb2.FILE_TYPE_DIRECTORY: fp.FileType.DIRECTORY,
}


def entry_info(entry: file_pb2.FileEntry) -> fp.EntryInfo:
    """envd's EntryInfo for a Longshore FileEntry."""
    is_link = entry.type == file_pb2.FILE_TYPE_SYMLINK
    info = fp.EntryInfo(
        name=entry.name,
        type=_TYPES.get(entry.type, fp.FileType.FILE if is_link else fp.FileType.UNSPECIFIED),
        path=entry.path,
        size=entry.size,
        mode=entry.mode,
        permissions=stat_mod.filemode(entry.mode),
        owner=str(entry.uid) if entry.HasField("uid") else "",
        group=str(entry.gid) if entry.HasField("gid") else "",
        modified_time=Timestamp(seconds=entry.modify_time.seconds, nanos=entry.modify_time.nanos),
        is_symlink=is_link,
    )
    if is_link:
        info.symlink_target = entry.symlink_target
    return info


def _path(value: str, name: str = "path") -> str:
    if not value or len(value) > MAX_PATH_CHARS:
        raise ConnectError(Code.INVALID_ARGUMENT, f"{name}: 1-{MAX_PATH_CHARS} characters")
    return value


def _unimplemented(call: str) -> ConnectError:
    return ConnectError(
        Code.UNIMPLEMENTED,
        f"filesystem.Filesystem/{call}: not supported by Longshore's E2B front door "
        "(the manager has no file-event RPC; see docs/e2b.md)",
    )


class FilesystemService(Filesystem):
    """envd's Filesystem service (the ``Filesystem`` protocol of the SDK's generated code)."""

    def __init__(self, gateway: Gateway, sandboxes: Sandboxes) -> None:
        self._gw = gateway
        self._sandboxes = sandboxes

    async def _target(self, ctx: RequestContext[Any, Any]) -> Target:
        return await target_of(self._sandboxes, ctx.request_headers)

    async def _call(self, ctx: RequestContext[Any, Any], rpc: str, request: Any) -> Any:
        try:
            target = await self._target(ctx)
            request.sandbox_id = target.sandbox_id
            method = getattr(self._gw.sandbox, rpc)
            return await method(request, metadata=target.caller.metadata())
        except Exception as exc:
            raise connect_error_of(exc) from None

    async def stat(self, request: fp.StatRequest, ctx: RequestContext[Any, Any]) -> fp.StatResponse:
        """StatPath."""
        found = await self._call(ctx, "StatPath", spb.StatPathRequest(path=_path(request.path)))
        return fp.StatResponse(entry=entry_info(found.entry))

    async def make_dir(
        self, request: fp.MakeDirRequest, ctx: RequestContext[Any, Any]
    ) -> fp.MakeDirResponse:
        """MakeDirectory with parents; ALREADY_EXISTS when it was there (envd's answer)."""
        made = await self._call(
            ctx,
            "MakeDirectory",
            spb.MakeDirectoryRequest(path=_path(request.path), make_parents=True),
        )
        if not made.created:
            raise ConnectError(Code.ALREADY_EXISTS, f"directory {request.path!r} already exists")
        return fp.MakeDirResponse(entry=entry_info(made.entry))

    async def move(self, request: fp.MoveRequest, ctx: RequestContext[Any, Any]) -> fp.MoveResponse:
        """MovePath, replacing the destination as envd's rename does."""
        moved = await self._call(
            ctx,
            "MovePath",
            spb.MovePathRequest(
                source_path=_path(request.source, "source"),
                destination_path=_path(request.destination, "destination"),
                overwrite=True,
            ),
        )
        return fp.MoveResponse(entry=entry_info(moved.entry))

    async def list_dir(
        self, request: fp.ListDirRequest, ctx: RequestContext[Any, Any]
    ) -> fp.ListDirResponse:
        """ListDirectory, every page, at most :data:`MAX_LISTED` entries."""
        entries: list[fp.EntryInfo] = []
        token = ""
        while True:
            page = await self._call(
                ctx,
                "ListDirectory",
                spb.ListDirectoryRequest(
                    path=_path(request.path),
                    depth=max(1, request.depth),
                    page_size=1000,
                    page_token=token,
                ),
            )
            entries.extend(entry_info(e) for e in page.entries)
            token = page.next_page_token
            if not token or len(entries) >= MAX_LISTED:
                return fp.ListDirResponse(entries=entries[:MAX_LISTED])

    async def remove(
        self, request: fp.RemoveRequest, ctx: RequestContext[Any, Any]
    ) -> fp.RemoveResponse:
        """RemovePath, recursive as envd's."""
        await self._call(
            ctx, "RemovePath", spb.RemovePathRequest(path=_path(request.path), recursive=True)
        )
        return fp.RemoveResponse()

    async def watch_dir(
        self, request: fp.WatchDirRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[fp.WatchDirResponse]:
        """Not supported."""
        raise _unimplemented("WatchDir")
        yield  # pragma: no cover - makes this an async generator

    async def create_watcher(
        self, request: fp.CreateWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> fp.CreateWatcherResponse:
        """Not supported."""
        raise _unimplemented("CreateWatcher")

    async def get_watcher_events(
        self, request: fp.GetWatcherEventsRequest, ctx: RequestContext[Any, Any]
    ) -> fp.GetWatcherEventsResponse:
        """Not supported."""
        raise _unimplemented("GetWatcherEvents")

    async def remove_watcher(
        self, request: fp.RemoveWatcherRequest, ctx: RequestContext[Any, Any]
    ) -> fp.RemoveWatcherResponse:
        """Not supported."""
        raise _unimplemented("RemoveWatcher")
