"""envd's ``/files`` HTTP endpoints: download (GET) and upload (POST).

``GET /files?path=`` streams ReadFile's chunks as the body (404 when the
path is missing, 400 for a directory, as envd). ``POST /files`` takes the
SDK's multipart form (one part per file, the part's filename is the path
unless ``?path=`` names it) or an ``application/octet-stream`` body with
``?path=``, and writes each file with WriteFiles (parents created). Bodies
are bounded by ``e2b.max_upload_bytes``; spooled parts live in temporary
files, and an octet-stream body of declared length streams straight through.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from typing import IO, Any

from longshore.sandbox.v1 import sandbox_service_pb2 as spb
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from services.e2b.control import guarded
from services.e2b.envd import Target, target_of
from services.e2b.gateway import Gateway
from services.e2b.sandboxes import Sandboxes
from services.runtime.errors import InvalidArgument

CHUNK_BYTES = 256 * 1024
MAX_FILES = 64
MAX_PATH_CHARS = 4096


def _path(value: str | None) -> str:
    if not value or len(value) > MAX_PATH_CHARS:
        raise InvalidArgument(f"path: 1-{MAX_PATH_CHARS} characters")
    return value


def _written(path: str) -> dict[str, str]:
    return {"name": posixpath.basename(path), "type": "file", "path": path}


class Transfers:
    """The ``/files`` routes."""

    def __init__(self, gateway: Gateway, sandboxes: Sandboxes, *, max_upload_bytes: int) -> None:
        self._gw = gateway
        self._sandboxes = sandboxes
        self._max = max_upload_bytes

    def routes(self) -> list[Route]:
        """GET and POST ``/files``."""
        return [
            Route("/files", self._guard(self.download), methods=["GET"]),
            Route("/files", self._guard(self.upload), methods=["POST"]),
        ]

    @staticmethod
    def _guard(handler: Any) -> Any:
        return guarded(handler)

    async def download(self, request: Request) -> Response:
        """Streams one file."""
        path = _path(request.query_params.get("path"))
        target = await target_of(self._sandboxes, request.headers)
        call = self._gw.sandbox.ReadFile(
            spb.ReadFileRequest(sandbox_id=target.sandbox_id, path=path),
            metadata=target.caller.metadata(),
            timeout=None,
        )
        stream = call.__aiter__()
        # The first message (the entry) carries any refusal: answer it as a
        # status before the body starts.
        try:
            first = await stream.__anext__()
        except StopAsyncIteration:
            return Response(b"", media_type="application/octet-stream")

        async def body() -> AsyncIterator[bytes]:
            try:
                if first.HasField("data"):
                    yield first.data
                async for part in stream:
                    if part.HasField("data"):
                        yield part.data
            finally:
                call.cancel()

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def _bounded(self, request: Request) -> AsyncGenerator[bytes, None]:
        total = 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > self._max + 64 * 1024:
                raise InvalidArgument(f"body: at most {self._max} bytes (e2b.max_upload_bytes)")
            yield chunk

    async def upload(self, request: Request) -> Response:
        """Writes one or more files; answers envd's list of written entries."""
        target = await target_of(self._sandboxes, request.headers)
        named = request.query_params.get("path")
        kind = request.headers.get("content-type", "")
        written: list[dict[str, str]] = []
        if kind.startswith("multipart/form-data"):
            form = await MultiPartParser(
                request.headers, self._bounded(request), max_files=MAX_FILES, max_fields=16
            ).parse()
            try:
                uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
                if not uploads:
                    raise InvalidArgument("file: no file part in the form")
                for upload in uploads:
                    path = _path(named if named and len(uploads) == 1 else upload.filename)
                    size = upload.size if upload.size is not None else 0
                    await self._write(target, path, upload.file, size)
                    written.append(_written(path))
            finally:
                await form.close()
        else:
            path = _path(named)
            await self._write_body(target, path, request)
            written.append(_written(path))
        return JSONResponse(written)

    async def _write(self, target: Target, path: str, source: IO[bytes], size: int) -> None:
        if size > self._max:
            raise InvalidArgument(f"{path}: at most {self._max} bytes (e2b.max_upload_bytes)")

        async def parts() -> AsyncIterator[spb.WriteFilesRequest]:
            yield spb.WriteFilesRequest(sandbox_id=target.sandbox_id)
            yield spb.WriteFilesRequest(
                header=spb.WriteFileHeader(path=path, size=size, make_parents=True)
            )
            source.seek(0)
            while chunk := source.read(CHUNK_BYTES):
                yield spb.WriteFilesRequest(data=chunk)

        await self._gw.sandbox.WriteFiles(parts(), metadata=target.caller.metadata())

    async def _write_body(self, target: Target, path: str, request: Request) -> None:
        """An octet-stream body: streamed through when its length is declared, else buffered."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit():
            size = int(declared)
            if size > self._max:
                raise InvalidArgument(f"{path}: at most {self._max} bytes (e2b.max_upload_bytes)")
            # The manager checks that the data add up to the declared size.
            body: AsyncIterator[bytes] = self._bounded(request)
        else:
            buffered = bytearray()
            async for chunk in self._bounded(request):
                buffered += chunk
            size, body = len(buffered), _once(bytes(buffered))

        async def parts() -> AsyncIterator[spb.WriteFilesRequest]:
            yield spb.WriteFilesRequest(sandbox_id=target.sandbox_id)
            yield spb.WriteFilesRequest(
                header=spb.WriteFileHeader(path=path, size=size, make_parents=True)
            )
            async for chunk in body:
                for start in range(0, len(chunk), CHUNK_BYTES):
                    yield spb.WriteFilesRequest(data=chunk[start : start + CHUNK_BYTES])

        await self._gw.sandbox.WriteFiles(parts(), metadata=target.caller.metadata())


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
