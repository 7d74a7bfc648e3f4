"""The run-reading RPCs of KanbanService: ListTaskRuns, GetRunOutput, StreamRunOutput."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio
from longshore.kanban.v1 import kanban_service_pb2 as pb
from sqlalchemy.orm import Session

from services.kanban import convert, limits, models, pagination
from services.kanban.db import Database
from services.kanban.events_bus import EventBus
from services.kanban.handler_pool import HandlerPool
from services.kanban.store import runs
from services.kanban.vocabulary import RunStatus
from services.runtime.errors import InvalidArgument, OutOfRange

STREAM_CHUNK = 64 * 1024


def _run_for(s: Session, run_id: str, task_id: str) -> models.TaskRun:
    if run_id:
        return runs.get_run(s, run_id)
    if not task_id:
        raise InvalidArgument("run_id or task_id: one is required")
    return runs.latest_run(s, task_id)


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise InvalidArgument("offset: must not be negative")
    if offset > limits.MAX_OUTPUT_OFFSET:
        raise OutOfRange(f"offset: at most {limits.MAX_OUTPUT_OFFSET}")


class RunReads:
    """Mixin for :class:`~services.kanban.server.KanbanServicer`: reading runs."""

    _db: Database
    _bus: EventBus
    _pool: HandlerPool
    #: Byte budget of one page (tests lower it).
    page_bytes: int = limits.PAGE_BYTES

    def ListTaskRuns(
        self, request: pb.ListTaskRunsRequest, context: grpc.ServicerContext
    ) -> pb.ListTaskRunsResponse:
        size = pagination.page_size(request.page_size)
        key = pagination.decode_token(
            request.page_token, "runs", request.task_id, (pagination.TIME, pagination.STR)
        )
        with self._db.read() as s:
            rows = runs.list_runs(
                s,
                request.task_id,
                after=key,  # (datetime, str), checked on decode
                limit=size + 1,
            )
            page = pagination.fill(rows, size, convert.run, budget=self.page_bytes)
            token = ""
            if page.last is not None:
                token = pagination.encode_token(
                    "runs", request.task_id, [page.last.start_time, page.last.run_id]
                )
            return pb.ListTaskRunsResponse(runs=page.messages, next_page_token=token)

    def GetRunOutput(
        self, request: pb.GetRunOutputRequest, context: grpc.ServicerContext
    ) -> pb.GetRunOutputResponse:
        _check_offset(request.offset)
        if request.limit < 0:
            raise InvalidArgument("limit: must not be negative")
        # Beyond 1 MiB a reply could pass the message limit; `offset + limit`
        # must also stay a 64-bit integer for the database.
        limit = min(request.limit or limits.OUTPUT_READ_BYTES, limits.OUTPUT_READ_BYTES)
        with self._db.read() as s:
            run = _run_for(s, request.run_id, request.task_id)
            data, next_offset = runs.read_output(s, run, request.offset, limit)
            ended = run.status != RunStatus.RUNNING
            return pb.GetRunOutputResponse(
                run_id=run.run_id,
                data=data,
                next_offset=next_offset,
                eof=ended and next_offset >= run.output_bytes,
                truncated=run.output_truncated,
            )

    def _stream_start(self, request: pb.StreamRunOutputRequest) -> str:
        with self._db.read() as s:
            return _run_for(s, request.run_id, request.task_id).run_id

    def _stream_read(self, run_id: str, offset: int) -> tuple[bytes, int, bool, bool]:
        """The next chunk from ``offset``: data, next offset, run ended, at the end."""
        with self._db.read() as s:
            run = runs.get_run(s, run_id)
            data, offset = runs.read_output(s, run, offset, STREAM_CHUNK)
            return data, offset, run.status != RunStatus.RUNNING, offset >= run.output_bytes

    async def StreamRunOutput(
        self, request: pb.StreamRunOutputRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.StreamRunOutputResponse]:
        _check_offset(request.offset)
        run_id = await self._pool.run(self._stream_start, request)
        offset = request.offset
        # The run's own signal rings when its output grows or it gains an
        # event (ending is one): a stream never wakes for another run's output.
        with self._bus.following(run_id) as signal:
            while True:
                version = signal.version
                data, offset, ended, at_end = await self._pool.run(
                    self._stream_read, run_id, offset
                )
                if data:
                    yield pb.StreamRunOutputResponse(
                        run_id=run_id, data=data, next_offset=offset, eof=False
                    )
                    continue
                if at_end and (ended or not request.follow):
                    yield pb.StreamRunOutputResponse(run_id=run_id, next_offset=offset, eof=ended)
                    return
                if self._bus.closed:
                    return
                await self._bus.wait(signal, version, self._bus.idle_seconds)
