"""The board page and its API: tasks by column, create, move, assign, block.

Live updates: ``/api/events`` relays ``WatchEvents`` as server-sent events; it
first sends a ``hello`` with the id it resumes from, so a page that (re)loads
its tasks on ``hello`` misses nothing.
"""

from __future__ import annotations

import uuid
from html import escape
from typing import Any

from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from services.dashboard.app import Router
from services.dashboard.convert import COLUMNS, status_enum, task_json, to_json
from services.dashboard.streams import format_event, sse_response
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response

#: A longest-title guard; the kanban service enforces its own limit too.
MAX_TITLE = 200


def latest_event_id(ctx: ViewContext, *, board_id: str = "", task_id: str = "") -> int:
    """The newest event id for a board or task (0 when there is none)."""
    request = kanban_service_pb2.ListTaskEventsRequest(
        board_id=board_id, task_id=task_id, page_size=1000
    )
    events = ctx.gateway.paged(ctx.gateway.kanban.ListTaskEvents, request, "events")
    return max((event.event_id for event in events), default=0)


def register(router: Router, ctx: ViewContext) -> None:  # noqa: PLR0915 - one closure per route
    """Register the board routes."""

    def home(request: Request) -> Response:
        return Response.redirect("/boards/default")

    def page(request: Request) -> Response:
        board_id = request.params["board_id"]
        body = (
            f'<section id="board-page" data-board="{escape(board_id)}">'
            '<div class="toolbar">'
            '<label>Board <select id="board-select"></select></label>'
            '<label>Profile <select id="profile-filter"><option value="">all</option>'
            "</select></label>"
            '<span id="live" class="live">connecting…</span>'
            "</div>"
            '<details class="create" id="create-details"><summary>New task</summary>'
            '<form id="create-form" class="create-form">'
            '<input name="title" placeholder="Title" required maxlength="200">'
            '<select name="assignee" id="create-assignee"><option value="">unassigned</option>'
            "</select>"
            '<input name="priority" type="number" value="0" title="priority">'
            '<input name="command" placeholder="Command (sh -c …)">'
            '<select name="status"><option value="ready">ready</option>'
            '<option value="triage">triage</option><option value="todo">todo</option></select>'
            '<button type="submit">Create</button>'
            "</form></details>"
            '<div id="columns" class="columns"></div>'
            "</section>"
        )
        return ctx.pages.render(
            identity=request.identity,
            page="board",
            title=f"Board {board_id}",
            body=body,
            scripts=("board.js",),
        )

    def boards(request: Request) -> Response:
        request_pb = kanban_service_pb2.ListBoardsRequest(page_size=1000)
        items = ctx.gateway.paged(ctx.gateway.kanban.ListBoards, request_pb, "boards")
        return Response.json({"boards": [to_json(board) for board in items]})

    def profiles(request: Request) -> Response:
        response = ctx.gateway.call(
            ctx.gateway.kanban.ListProfiles, kanban_service_pb2.ListProfilesRequest(page_size=1000)
        )
        return Response.json(
            {
                "profiles": [to_json(profile) for profile in response.profiles],
                "running": dict(response.running),
            }
        )

    def tasks(request: Request) -> Response:
        board_id = request.params["board_id"]
        items = ctx.gateway.list_tasks(board_id, assignee=request.query.get("assignee", ""))
        return Response.json(
            {
                "board_id": board_id,
                "columns": list(COLUMNS),
                "tasks": [task_json(task) for task in items],
            }
        )

    def create(request: Request) -> Response:
        data = request.json()
        title = str(data.get("title", "")).strip()
        if not title or len(title) > MAX_TITLE:
            raise ValueError(f"title: required, at most {MAX_TITLE} characters")
        command = str(data.get("command", "")).strip()
        task = task_pb2.Task(
            board_id=str(data.get("board_id") or "default"),
            title=title,
            description=str(data.get("description", "")),
            assignee=str(data.get("assignee", "")),
            priority=int(data.get("priority") or 0),
            command=["sh", "-c", command] if command else [],
            status=task_pb2.TaskStatus.Value(
                status_enum(str(data.get("status") or "ready"), "TASK_STATUS_")
            ),
        )
        response = ctx.gateway.call(
            ctx.gateway.kanban.CreateTask,
            kanban_service_pb2.CreateTaskRequest(
                task=task, request_id=str(data.get("request_id") or uuid.uuid4())
            ),
        )
        return Response.json({"task": task_json(response.task)}, 201)

    def move(request: Request) -> Response:
        data = request.json()
        status = task_pb2.TaskStatus.Value(status_enum(str(data.get("status", "")), "TASK_STATUS_"))
        response = ctx.gateway.call(
            ctx.gateway.kanban.MoveTask,
            kanban_service_pb2.MoveTaskRequest(
                task_id=request.params["task_id"],
                status=status,
                reason=str(data.get("reason") or "moved on the dashboard"),
            ),
        )
        return Response.json({"task": task_json(response.task)})

    def assign(request: Request) -> Response:
        data = request.json()
        response = ctx.gateway.call(
            ctx.gateway.kanban.AssignTask,
            kanban_service_pb2.AssignTaskRequest(
                task_id=request.params["task_id"], assignee=str(data.get("assignee", ""))
            ),
        )
        return Response.json({"task": task_json(response.task)})

    def block(request: Request) -> Response:
        data = request.json()
        reason = str(data.get("reason", "")).strip()
        if not reason:
            raise ValueError("reason: required to block a task")
        response = ctx.gateway.call(
            ctx.gateway.kanban.BlockTask,
            kanban_service_pb2.BlockTaskRequest(task_id=request.params["task_id"], reason=reason),
        )
        return Response.json({"task": task_json(response.task)})

    def unblock(request: Request) -> Response:
        data = request.json()
        response = ctx.gateway.call(
            ctx.gateway.kanban.UnblockTask,
            kanban_service_pb2.UnblockTaskRequest(
                task_id=request.params["task_id"],
                reason=str(data.get("reason") or "unblocked on the dashboard"),
            ),
        )
        return Response.json({"task": task_json(response.task)})

    def events(request: Request) -> Response:
        board_id = request.query.get("board_id", "")
        task_id = request.query.get("task_id", "")
        resume = request.header("last-event-id") or request.query.get("since", "")
        since = int(resume) if resume.isdigit() else None
        if since is None:
            since = latest_event_id(ctx, board_id=board_id, task_id=task_id)
        start_id = since

        def start() -> Any:
            return ctx.gateway.watch_events(since=start_id, board_id=board_id, task_id=task_id)

        def convert(message: Any) -> tuple[str, str, Any]:
            event = message.event
            return "task", str(event.event_id), to_json(event)

        response = sse_response(ctx.hub, start, convert)
        inner = response.stream
        assert inner is not None

        def with_hello(write: Any) -> None:
            write(format_event("hello", str(start_id), {"since": start_id}))
            inner(write)

        response.stream = with_hello
        return response

    router.add("GET", "/", home)
    router.add("GET", "/boards/{board_id}", page)
    router.add("GET", "/api/boards", boards)
    router.add("GET", "/api/profiles", profiles)
    router.add("GET", "/api/boards/{board_id}/tasks", tasks)
    router.add("POST", "/api/tasks", create)
    router.add("POST", "/api/tasks/{task_id}/move", move)
    router.add("POST", "/api/tasks/{task_id}/assign", assign)
    router.add("POST", "/api/tasks/{task_id}/block", block)
    router.add("POST", "/api/tasks/{task_id}/unblock", unblock)
    router.add("GET", "/api/events", events)
