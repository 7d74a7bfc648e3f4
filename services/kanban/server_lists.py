"""The List RPCs of KanbanService: boards, profiles, tasks, comments, events.

Every page holds at most ``page_size`` rows and at most
:data:`~services.kanban.limits.PAGE_BYTES` bytes (:func:`pagination.fill`);
its token resumes after the last row sent. Tokens are checked field by field
(:func:`pagination.decode_token`), so a forged one is INVALID_ARGUMENT.
"""

from __future__ import annotations

from typing import Any

import grpc
from longshore.kanban.v1 import kanban_service_pb2 as pb

from services.kanban import convert, limits, pagination
from services.kanban.db import Database
from services.kanban.latest_plan import LatestPlan
from services.kanban.store import boards, comments, events, links, profiles, tasks
from services.runtime.errors import InvalidArgument

TIME, STR, INT = pagination.TIME, pagination.STR, pagination.INT


class ListReads:
    """Mixin for :class:`~services.kanban.server.KanbanServicer`: the List calls."""

    _db: Database
    _plans: LatestPlan
    #: Byte budget of one page (tests lower it).
    page_bytes: int = limits.PAGE_BYTES

    def ListBoards(
        self, request: pb.ListBoardsRequest, context: grpc.ServicerContext
    ) -> pb.ListBoardsResponse:
        size = pagination.page_size(request.page_size)
        key = pagination.decode_token(request.page_token, "boards", None, (STR,))
        with self._db.read() as s:
            rows = boards.list_boards(s, after=key[0] if key else None, limit=size + 1)
            counts = boards.task_counts(s, [r.board_id for r in rows[:size]])
            page = pagination.fill(
                rows, size, lambda r: convert.board(r, counts[r.board_id]), budget=self.page_bytes
            )
            token = (
                pagination.encode_token("boards", None, [page.last.board_id]) if page.last else ""
            )
            return pb.ListBoardsResponse(boards=page.messages, next_page_token=token)

    def ListProfiles(
        self, request: pb.ListProfilesRequest, context: grpc.ServicerContext
    ) -> pb.ListProfilesResponse:
        size = pagination.page_size(request.page_size)
        key = pagination.decode_token(request.page_token, "profiles", None, (STR,))
        with self._db.read() as s:
            rows = profiles.list_profiles(s, after=key[0] if key else None, limit=size + 1)
            running = profiles.running_counts(s)
            page = pagination.fill(rows, size, convert.profile, budget=self.page_bytes)
            token = pagination.encode_token("profiles", None, [page.last.name]) if page.last else ""
            return pb.ListProfilesResponse(
                profiles=page.messages,
                next_page_token=token,
                running={m.name: running.get(m.name, 0) for m in page.messages},
            )

    def ListTasks(
        self, request: pb.ListTasksRequest, context: grpc.ServicerContext
    ) -> pb.ListTasksResponse:
        size = pagination.page_size(request.page_size)
        statuses = [convert.task_status_name(v) for v in request.statuses]
        filters = [request.board_id, sorted(statuses), request.assignee]
        key = pagination.decode_token(request.page_token, "tasks", filters, (INT, TIME, STR))
        with self._db.read() as s:
            boards.require(s, request.board_id)
            rows = tasks.list_tasks(
                s,
                board_id=request.board_id,
                statuses=statuses,
                assignee=request.assignee,
                after=key,  # (int, datetime, str), checked on decode
                limit=size + 1,
            )
            candidates = rows[:size]
            parents = links.parent_ids(s, [r.task_id for r in candidates])
            readiness: dict[str, Any] = (
                self._plans.readiness(s, candidates) if request.include_readiness else {}
            )
            page = pagination.fill(
                rows,
                size,
                lambda r: convert.task(
                    r,
                    parents[r.task_id],
                    readiness[r.task_id].to_proto() if r.task_id in readiness else None,
                ),
                budget=self.page_bytes,
            )
            token = ""
            if page.last is not None:
                last = page.last
                token = pagination.encode_token(
                    "tasks", filters, [last.priority, last.create_time, last.task_id]
                )
            return pb.ListTasksResponse(tasks=page.messages, next_page_token=token)

    def ListComments(
        self, request: pb.ListCommentsRequest, context: grpc.ServicerContext
    ) -> pb.ListCommentsResponse:
        size = pagination.page_size(request.page_size)
        key = pagination.decode_token(request.page_token, "comments", request.task_id, (TIME, STR))
        with self._db.read() as s:
            rows = comments.list_comments(
                s,
                request.task_id,
                after=key,  # (datetime, str), checked on decode
                limit=size + 1,
            )
            page = pagination.fill(rows, size, convert.comment, budget=self.page_bytes)
            token = ""
            if page.last is not None:
                token = pagination.encode_token(
                    "comments", request.task_id, [page.last.create_time, page.last.comment_id]
                )
            return pb.ListCommentsResponse(comments=page.messages, next_page_token=token)

    def ListTaskEvents(
        self, request: pb.ListTaskEventsRequest, context: grpc.ServicerContext
    ) -> pb.ListTaskEventsResponse:
        if request.after_event_id < 0:
            raise InvalidArgument("after_event_id: must not be negative")
        size = pagination.page_size(request.page_size)
        filters = [request.task_id, request.board_id, request.after_event_id]
        key = pagination.decode_token(request.page_token, "events", filters, (INT,))
        after = int(key[0]) if key else request.after_event_id
        with self._db.read() as s:
            rows = events.list_events(
                s,
                after_event_id=after,
                task_id=request.task_id,
                board_id=request.board_id,
                limit=size + 1,
            )
            page = pagination.fill(rows, size, convert.event, budget=self.page_bytes)
            token = (
                pagination.encode_token("events", filters, [page.last.event_id])
                if page.last is not None
                else ""
            )
            return pb.ListTaskEventsResponse(events=page.messages, next_page_token=token)
