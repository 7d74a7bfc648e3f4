"""The dispatcher page: a dry-run preview with each ready task's reason, and
the last tick run from this dashboard.

The contracts have no "last tick" read (``Dispatch`` either runs or plans a
tick), so "last tick" is the last real tick this dashboard process ran.
"""

from __future__ import annotations

import time

from longshore.kanban.v1 import kanban_service_pb2, task_pb2

from services.dashboard.app import Router
from services.dashboard.convert import task_json, to_json
from services.dashboard.views import ViewContext
from services.dashboard.web import Request, Response


def register(router: Router, ctx: ViewContext) -> None:
    """Register the dispatcher routes."""

    def page(request: Request) -> Response:
        body = (
            '<section id="dispatcher-page">'
            '<div class="toolbar"><h1>Dispatcher</h1>'
            '<label>Board <input id="board" value="default" size="12"></label>'
            '<button id="preview">Preview (dry run)</button>'
            '<button id="tick">Run a tick now</button></div>'
            '<div class="task-grid">'
            '<section class="panel"><h2>Dry-run preview</h2><div id="preview-result"></div>'
            "</section>"
            '<section class="panel"><h2>Last tick <small id="last-tick-time" class="muted">'
            '</small></h2><div id="last-tick"></div></section>'
            '<section class="panel wide"><h2>Ready tasks and why</h2>'
            '<div class="scroll-x"><table id="ready-reasons"><thead><tr><th>task</th>'
            "<th>assignee</th><th>priority</th><th>reason</th></tr></thead><tbody></tbody>"
            "</table></div></section></div></section>"
        )
        return ctx.pages.render(
            identity=request.identity,
            page="dispatcher",
            title="Dispatcher",
            body=body,
            scripts=("dispatcher.js",),
        )

    def preview(request: Request) -> Response:
        board_id = request.query.get("board_id", "")
        response = ctx.gateway.call(
            ctx.gateway.kanban.Dispatch,
            kanban_service_pb2.DispatchRequest(board_id=board_id, dry_run=True),
        )
        ready = [
            task_json(task)
            for task in ctx.gateway.list_tasks(board_id)
            if task.status == task_pb2.TASK_STATUS_READY
        ]
        with ctx.lock:
            last = ctx.state.get("last_tick")
        return Response.json(
            {
                "preview": to_json(response.result),
                "duration": response.duration.ToTimedelta().total_seconds(),
                "ready": ready,
                "last_tick": last,
            }
        )

    def tick(request: Request) -> Response:
        data = request.json()
        board_id = str(data.get("board_id", ""))
        response = ctx.gateway.call(
            ctx.gateway.kanban.Dispatch, kanban_service_pb2.DispatchRequest(board_id=board_id)
        )
        last = {
            "result": to_json(response.result),
            "duration": response.duration.ToTimedelta().total_seconds(),
            "ran_at": time.time(),
            "by": request.identity.subject if request.identity else "",
        }
        with ctx.lock:
            ctx.state["last_tick"] = last
        return Response.json({"last_tick": last})

    router.add("GET", "/dispatcher", page)
    router.add("GET", "/api/dispatcher", preview)
    router.add("POST", "/api/dispatcher/tick", tick)
