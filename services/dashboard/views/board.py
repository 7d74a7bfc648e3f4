"""The board page and its API: tasks by column, create, move, assign, block.

Live updates: ``/api/events`` relays ``WatchEvents`` as server-sent events; it
first sends a ``hello`` with the id it resumes from, so a page that (re)loads
its tasks on ``hello`` misses nothing.
"""

from __future__ import annotations

import uuid
from typing import Any

from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from services.dashboard.app import Router
from services.dashboard.convert import COLUMNS, status_enum, task_json, to_json
from services.dashboard.gateway import GatewayClient
from services.dashboard.streams import EventStream, format_event
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response

#: A longest-title guard; the kanban service enforces its own limit too.
MAX_TITLE = 200


def latest_event_id(gateway: GatewayClient, *, board_id: str = "", task_id: str = "") -> int:
    """The newest event id for a board or task (0 when there is none)."""
    request = kanban_service_pb2.ListTaskEventsRequest(
        board_id=board_id, task_id=task_id, page_size=1000
    )
    events = gateway.paged(gateway.kanban.ListTaskEvents, request, "events")
    return max((event.event_id for event in events), default=0)


def register(router: Router, ctx: ViewContext) -> None:  # noqa: PLR0915 - one closure per route
    """Register the board routes."""

    def home(request: Request) -> Response:
        return Response.redirect("/boards/default")

    def page(request: Request) -> Response:
        board_id = request.params["board_id"]
        return ctx.pages.render(
            identity=request.identity,
            page="board",
            title=f"Board {board_id}",
            template="board.html",
            scripts=("board.js",),
            board_id=board_id,
        )

    def boards(request: Request) -> Response:
        gw = ctx.gateway_for(request)
        request_pb = kanban_service_pb2.ListBoardsRequest(page_size=1000)
        items = gw.paged(gw.kanban.ListBoards, request_pb, "boards")
        return Response.json({"boards": [to_json(board) for board in items]})

    def profiles(request: Request) -> Response:
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.ListProfiles, kanban_service_pb2.ListProfilesRequest(page_size=1000)
        )
        return Response.json(
            {
                "profiles": [to_json(profile) for profile in response.profiles],
                "running": dict(response.running),
            }
        )

    def tasks(request: Request) -> Response:
        board_id = request.params["board_id"]
        items = ctx.gateway_for(request).list_tasks(
            board_id, assignee=request.query.get("assignee", "")
        )
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
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.CreateTask,
            kanban_service_pb2.CreateTaskRequest(
                task=task, request_id=str(data.get("request_id") or uuid.uuid4())
            ),
        )
        return Response.json({"task": task_json(response.task)}, 201)

    def move(request: Request) -> Response:
        data = request.json()
        status = task_pb2.TaskStatus.Value(status_enum(str(data.get("status", "")), "TASK_STATUS_"))
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.MoveTask,
            kanban_service_pb2.MoveTaskRequest(
                task_id=request.params["task_id"],
                status=status,
                reason=str(data.get("reason") or "moved on the dashboard"),
            ),
        )
        return Response.json({"task": task_json(response.task)})

    def assign(request: Request) -> Response:
        data = request.json()
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.AssignTask,
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
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.BlockTask,
            kanban_service_pb2.BlockTaskRequest(task_id=request.params["task_id"], reason=reason),
        )
        return Response.json({"task": task_json(response.task)})

    def unblock(request: Request) -> Response:
        data = request.json()
        gw = ctx.gateway_for(request)
        response = gw.call(
            gw.kanban.UnblockTask,
            kanban_service_pb2.UnblockTaskRequest(
                task_id=request.params["task_id"],
                reason=str(data.get("reason") or "unblocked on the dashboard"),
            ),
        )
        return Response.json({"task": task_json(response.task)})

    def events(request: Request) -> Response:
        gw = ctx.gateway_for(request)
        identity = request.identity
        board_id = request.query.get("board_id", "")
        task_id = request.query.get("task_id", "")
        resume = request.header("last-event-id") or request.query.get("since", "")
        since = int(resume) if resume.isdigit() else None
        if since is None:
            since = latest_event_id(gw, board_id=board_id, task_id=task_id)
        start_id = since

        def start() -> Any:
            return gw.watch_events(since=start_id, board_id=board_id, task_id=task_id)

        def convert(message: Any) -> tuple[str, str, Any]:
            event = message.event
            return "task", str(event.event_id), to_json(event)

        # The hello says where the stream resumes, so a page that (re)loads
        # its tasks on hello misses nothing.
        hello = format_event("hello", str(start_id), {"since": start_id})
        return Response.event_stream(
            EventStream(
                start,
                convert,
                prelude=[hello],
                on_unauthenticated=lambda: ctx.end_session(identity),
            )
        )

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
